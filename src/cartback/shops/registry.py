"""The adapters by platform name, as the route and the CLI name them."""

from __future__ import annotations

from typing import cast

from cartback.shops import bigcommerce, cartflows, generic, shopify, woocommerce
from cartback.shops.base import Adapter

ADAPTERS: dict[str, Adapter] = {
    "shopify": cast(Adapter, shopify),
    "woocommerce": cast(Adapter, woocommerce),
    "cartflows": cast(Adapter, cartflows),
    "bigcommerce": cast(Adapter, bigcommerce),
    "generic": cast(Adapter, generic),
}

# Platforms cartback polls (`cartback shops magento poll`) instead of receiving webhooks.
POLLED = frozenset({"magento"})


def adapter(platform: str) -> Adapter | None:
    return ADAPTERS.get(platform)
