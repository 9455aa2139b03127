"""The HTTP service and web page in front of one classifier (:mod:`.app`), on top of :mod:`.analysis`."""
