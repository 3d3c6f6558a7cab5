"""User-managed EndpointSlices and Endpoints of selectorless Services as a source: which addresses are
checked (``selection``), what an object shows and the patch that flips it (``readiness``), the two
kinds as records (``kinds``), the patch under a resourceVersion test (``writes``), and the source that
ties them to the watch, the coordinator and the write queue (``source``)."""
