// Command kiln-testbed is one binary for the test bed's control plane: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler and kubectl. It picks the
// component from the name it is called by (a symlink) or from its first argument,
// so the Kubernetes packages are compiled and linked once.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler": func() *cobra.Command {
		return scheduler.NewSchedulerCommand()
	},
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args
	if _, known := components[name]; !known && name != "etcd" && name != "kubectl" && len(os.Args) > 1 {
		name, args = os.Args[1], os.Args[1:]
		os.Args = args
	}
	switch name {
	case "etcd":
		etcdmain.Main(args)
		return
	case "kubectl":
		command := kubectlcmd.NewDefaultKubectlCommand()
		if err := cli.RunNoErrOutput(command); err != nil {
			kubectlutil.CheckErr(err)
		}
		return
	}
	newCommand, known := components[name]
	if !known {
		fmt.Fprintf(os.Stderr, "kiln-testbed: unknown component %q (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)\n", name)
		os.Exit(2)
	}
	os.Exit(cli.Run(newCommand()))
}
