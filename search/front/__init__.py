"""The front doors: the command line (``_cli``), the run request both it and the Python API
build (``_request``), the configuration's layers (``_config``) and `validate`."""
