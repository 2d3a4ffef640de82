"""The test bed: a real Kubernetes control plane on loopback with fake GPU nodes.

``binaries`` builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
kwok and helm from pinned Go modules into a cache; ``cluster`` starts them; ``nodes`` adds
GPU pools that look like GPU Feature Discovery labelled them; ``localproc`` runs a pod's
container as a local process in place of a GPU node. Development and test use only.
"""
