"""What the tests share that is not a fixture (fixtures stay in conftest.py files).

Import as ``from tests.helpers.registry import RegistryServer``; the repository
root is the only ``pythonpath`` entry. Modules: ``registry`` (docker-registry
processes, the cog and redirect fronts), ``token_server`` and ``loopback`` (the
token service and its HTTP plumbing), ``counting_proxy``, ``images``,
``readback``, ``tars``, ``fuse``, ``reliability``, ``soci_oracle``,
``zstdchunked_spec`` and ``tocproducers``. The one
reverse proxy is ``tools.faultproxy.FaultProxy``; helpers here only use it.
"""
