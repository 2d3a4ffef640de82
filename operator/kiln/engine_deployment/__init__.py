"""Serving: EngineDeployment planning (pure), rendering (pure) and reconciling."""
