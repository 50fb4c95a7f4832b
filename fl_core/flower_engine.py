"""The same app under Flower's own simulation engine (`flwr.simulation.run_simulation`), for comparison.

`python -m fl_core --engine flower ...` runs this. Flower's `run_simulation`
hands apps an empty run config (only `flwr run` reads pyproject.toml), so the
app's ServerApp and ClientApp are wrapped to see the fused run config, as under
`flwr run`. Flower's engine sizes its own actor pool from the whole cluster,
starts and stops Ray itself, and has no checkpoints, resume or sweeps.
"""

from __future__ import annotations

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fl_core.apps import FlowerApp
from fl_core.settings import RunSettings


class _ClientAppWithRunConfig(ClientApp):
    """A ClientApp that hands `run_config` to the wrapped one in every Context."""

    def __init__(self, inner: ClientApp, run_config: dict) -> None:
        super().__init__()
        self.inner, self.run_config = inner, run_config

    def __call__(self, message, context):
        """Run the wrapped ClientApp with the run config filled in (Flower refuses a Context whose config changed)."""
        original, context.run_config = context.run_config, dict(self.run_config)
        try:
            return self.inner(message, context)
        finally:
            context.run_config = original


class _ServerAppWithRunConfig(ServerApp):
    """A ServerApp that hands `run_config` to the wrapped one."""

    def __init__(self, inner: ServerApp, run_config: dict) -> None:
        super().__init__()
        self.inner, self.run_config = inner, run_config

    def __call__(self, grid, context):
        """Run the wrapped ServerApp with the run config filled in."""
        context.run_config = dict(self.run_config)
        return self.inner(grid, context)


def run_with_flower(app: FlowerApp, run_config: dict, settings: RunSettings, verbose: bool = False) -> None:
    """Run the app for `settings.pool_size` nodes on Flower's Ray backend, one client per num_client_cpus/gpus."""
    from flwr.simulation import run_simulation  # imports Ray: only for --engine flower

    # Flower's Ray backend gives its actors this process's sys.path, where loading the app put its folder.
    backend_config = {"client_resources": {"num_cpus": settings.num_client_cpus, "num_gpus": settings.num_client_gpus}}
    run_simulation(
        server_app=_ServerAppWithRunConfig(app.load("server"), run_config),
        client_app=_ClientAppWithRunConfig(app.load("client"), run_config),
        num_supernodes=settings.pool_size,
        backend_config=backend_config,
        verbose_logging=verbose,
    )
