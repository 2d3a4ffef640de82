"""``kiln gate``: the rollout gate Job's program (AIPerf against both keys, golden prompts)."""
