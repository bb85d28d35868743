"""
Deploy a model directory into a running semseg node through its ROS parameter service.

    python -m semseg_ros.tools.deploy NODE OUT [--backend auto] [--timeout 30]

Sets ``model.backend`` and ``model.weights`` together (SetParametersAtomically, so the node
never sees a backend with the other model's weights); the node swaps its model live and
answers whether the new one loaded. `semseg-ros-train --deploy NODE` calls this only when its
gate passed. Needs rclpy (a ROS 2 environment); training itself does not.
"""

import argparse
import os
import sys


class DeployError(RuntimeError):
    """The node could not be reached or refused the model; the message says which."""


def parameters_request(backend, weights):
    """Return a SetParametersAtomically request for model.backend and model.weights."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParametersAtomically

    request = SetParametersAtomically.Request()
    for name, value in (('model.backend', backend), ('model.weights', weights)):
        request.parameters.append(Parameter(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value=value)))
    return request


def service_name(node):
    """Return the atomic parameter service of a node name ('/semseg', 'ns/semseg')."""
    node = node.strip()
    if not node or node == '/':
        raise DeployError('give the node name, e.g. /semseg')
    return '/' + node.strip('/') + '/set_parameters_atomically'


def deploy(node, weights, backend='auto', timeout=30.0, log=print):
    """Set model.backend/model.weights of a running node; raise DeployError on failure."""
    if not os.path.exists(weights):
        raise DeployError(f'{weights} does not exist')
    import rclpy
    from rcl_interfaces.srv import SetParametersAtomically

    name = service_name(node)
    own = not rclpy.ok()
    if own:
        rclpy.init()
    client_node = rclpy.create_node('semseg_deploy')
    try:
        client = client_node.create_client(SetParametersAtomically, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise DeployError(f'no parameter service {name} within {timeout:.0f} s: is the node '
                              'running, and in this ROS domain?')
        future = client.call_async(parameters_request(backend, weights))
        rclpy.spin_until_future_complete(client_node, future, timeout_sec=timeout)
        if not future.done() or future.result() is None:
            raise DeployError(f'{name} did not answer within {timeout:.0f} s')
        result = future.result().result
        if not result.successful:
            raise DeployError(f'{node} refused the model: {result.reason or "no reason given"}')
        log(f'deployed {weights} to {node} (model.backend {backend})')
    finally:
        client_node.destroy_node()
        if own:
            rclpy.shutdown()


def main(argv=None):
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog='semseg-ros-deploy',
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument('node', help='node name, e.g. /semseg')
    parser.add_argument('weights', help='model directory or file')
    parser.add_argument('--backend', default='auto')
    parser.add_argument('--timeout', type=float, default=30.0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        deploy(args.node, os.path.abspath(args.weights), args.backend, args.timeout)
    except DeployError as exc:
        print(f'semseg-ros-deploy: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
