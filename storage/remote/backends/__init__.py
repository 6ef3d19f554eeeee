"""The remote backends, one module each; each module's ``BACKEND`` registers it (``_open``)."""
