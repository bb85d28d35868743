"""What `ros2 param load`, `ros2 param set` and `ros2 lifecycle set` do to a running node."""

import time

from conftest import claim_domain
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
import numpy as np
from rcl_interfaces.msg import Parameter
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import DescribeParameters
from rcl_interfaces.srv import GetParameters
from rcl_interfaces.srv import ListParameters
from rcl_interfaces.srv import SetParameters
from semseg_ros.io.image import image_to_array
from test_node_features import call
from test_node_features import expect_frame
from test_node_features import service_client
from test_node_features import set_param
from test_node_features import tiny_model  # noqa: F401 - a fixture
from test_node_integration import Harness
from test_node_integration import start_node
from test_node_integration import stop_node
from test_node_integration import stripes
from test_node_integration import TIMEOUT


def dump(harness):
    """Return every parameter of /semseg as rcl_interfaces Parameters (as ros2 param dump)."""
    names = call(harness, service_client(harness, ListParameters, '/semseg/list_parameters'),
                 ListParameters.Request()).result.names
    values = call(harness, service_client(harness, GetParameters, '/semseg/get_parameters'),
                  GetParameters.Request(names=names)).values
    return [Parameter(name=n, value=v) for n, v in zip(names, values)]


def read_only(harness, names):
    """Return the names among names that are read-only."""
    client = service_client(harness, DescribeParameters, '/semseg/describe_parameters')
    described = call(harness, client, DescribeParameters.Request(names=names)).descriptors
    return {d.name for d in described if d.read_only}


def test_reload_of_a_dump_int_for_double_and_shutdown_exit(tiny_model):  # noqa: F811
    domain = claim_domain()
    process = start_node(domain, *tiny_model, 'overlay_alpha:=0.0')
    harness = Harness(domain)
    try:
        harness.wait_ready(process)
        # ros2 param load of a ros2 param dump, onto the active node: every value is the
        # node's own, so each one that may be set at all (not read-only) is accepted, the
        # configure-time ones (model.*, grid.*, ...) included.
        params = dump(harness)
        fixed = read_only(harness, [p.name for p in params])
        loadable = [p for p in params if p.name not in fixed]
        assert len(loadable) > 40
        client = service_client(harness, SetParameters, '/semseg/set_parameters')
        results = call(harness, client, SetParameters.Request(parameters=loadable)).results
        refused = {p.name: r.reason for p, r in zip(loadable, results) if not r.successful}
        assert refused == {}
        # A configure-time value that does change is still refused while configured.
        result = set_param(harness, 'grid.resolution', 0.1)
        assert not result.successful and 'takes effect on configure' in result.reason
        # An integer for a double parameter (ros2 param set /semseg overlay_alpha 1) is
        # stored as a double and takes effect.
        assert set_param(harness, 'overlay_alpha', 1).successful
        value = call(harness, service_client(harness, GetParameters, '/semseg/get_parameters'),
                     GetParameters.Request(names=['overlay_alpha'])).values[0]
        assert value.type == ParameterType.PARAMETER_DOUBLE and value.double_value == 1.0
        got = expect_frame(harness, names=('overlay', 'color'))
        assert np.array_equal(image_to_array(got['overlay'])[0],
                              image_to_array(got['color'])[0])
        assert not np.array_equal(image_to_array(got['overlay'])[0], stripes(12, 18))
        # The shutdown transition ends the process (after its reply).
        client = service_client(harness, ChangeState, '/semseg/change_state')
        result = call(harness, client, ChangeState.Request(
            transition=Transition(id=Transition.TRANSITION_ACTIVE_SHUTDOWN)))
        assert result.success
        end = time.monotonic() + TIMEOUT
        while process.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        assert process.returncode == 0, 'the node still runs after the shutdown transition'
    finally:
        harness.close()
        log = stop_node(process)
    assert 'Traceback' not in log, log
