"""The dashboards: the customer portal (``/portal``), the reseller dashboard (``/reseller``)
and the platform admin (``/admin``), each behind its own login page.

Pages are rendered on the server with Jinja2 (:mod:`.pages`) as shells that carry the brand,
the language and who is signed in; small scripts under ``static/js`` read the REST API with the
session cookie and follow ``/v2/stream`` live. No business logic lives here: every number a
page shows comes from the API, so pages, API clients and GraphQL cannot disagree.

White-label (:mod:`.brand`): the Host header names the tenant, ``<slug>.<base domain>`` or a
reseller's custom domain; its pages carry the reseller's name, logo and colours, and only its
own users may sign in there. A reseller's customers see its brand on every host.

Charts use uPlot, fetched from the npm registry at install time (:mod:`.vendor`, checked
against its published sha512) and served from ``/static``: pages work offline.
"""
