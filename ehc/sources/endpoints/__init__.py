"""User-managed EndpointSlices and Endpoints of selectorless Services as a source (issue 13): so far
the selection of their addresses; the source and its writer follow."""
