"""The kubernetes_asyncio ApiClient ehc uses: in-cluster config, or a kubeconfig file."""

from __future__ import annotations

import os

from kubernetes_asyncio import client, config


async def make_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """``kubeconfig`` (or $KUBECONFIG) when given, else the in-cluster service account.

    Raises ``config.ConfigException`` with the library's explanation when neither works.
    """
    path = kubeconfig or os.environ.get("KUBECONFIG")
    configuration = client.Configuration()
    if path:
        await config.load_kube_config(config_file=path, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)
