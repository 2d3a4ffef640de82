"""Kopf handlers: thin glue from watch events to the reconcilers.

Importing this package registers every handler; ``kiln.operator`` runs them.
"""

from kiln.handlers import (
    engine_build,
    engine_deployment,
    indexes,
    leadership,
    login,
    relists,
    settings,
    sweep,
    usage,
)

__all__ = ["engine_build", "engine_deployment", "indexes", "leadership", "login", "relists",
           "settings", "sweep", "usage"]
