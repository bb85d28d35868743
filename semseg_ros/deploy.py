"""
Put a model into a running segmentation node: its model parameters, set in one atomic call.

    from semseg_ros.deploy import deploy
    result = deploy('/semseg', 'runs/exp1/model.ts', backend='torchscript')
    print(result.successful, result.reason)

The node loads the model beside the one it runs, swaps it in between two frames and answers
the call once the new model runs, or once it failed (the old model then keeps running and
the reason comes back). See docs/MODELS.md, "Live model swap".

From a shell: ``python -m semseg_ros.deploy /semseg model.ts --backend torchscript``
(exit status 0 when the node runs the new model).
"""

import argparse
from dataclasses import dataclass
import os
import sys
import time

from rcl_interfaces.msg import Parameter
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.msg import ParameterValue
from rcl_interfaces.srv import SetParametersAtomically
import rclpy
from rclpy.executors import SingleThreadedExecutor
import yaml

PROBE_SECONDS = 2.0  # per try of the empty request that checks the reply path


class DeployError(RuntimeError):
    """The node cannot be reached, or it did not answer in time."""


@dataclass
class DeployResult:
    """The node's answer: successful, its reason, and the parameters that were sent."""

    successful: bool
    reason: str
    seconds: float
    parameters: dict


def _value(value):
    """Return the ParameterValue of a bool, int, float, str or list of str."""
    if isinstance(value, bool):
        return ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    if isinstance(value, int):
        return ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    if isinstance(value, float):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    if isinstance(value, (list, tuple)):
        return ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY,
                              string_array_value=[str(v) for v in value])
    return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(value))


def parameters(weights, backend='auto', classes=None, options=None, extra=None):
    """Return the {name: value} that deploy sets (weights made absolute when they exist here)."""
    weights = str(weights)
    if weights and os.path.exists(weights):
        weights = os.path.abspath(weights)
    if not str(backend).strip():
        raise ValueError('backend must name a model backend (or auto)')
    values = {'model.backend': str(backend).strip(), 'model.weights': weights}
    if classes is not None:
        values['classes'] = str(classes)
    if options is not None:
        values['model.options'] = options if isinstance(options, str) else (
            yaml.safe_dump(dict(options), default_flow_style=True).strip() if options else '')
    values.update(extra or {})
    for name, value in values.items():
        ok = isinstance(value, (str, bool, int, float)) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
        if not ok:
            raise ValueError(f'parameter {name}: deploy sends a bool, int, float, str or list '
                             f'of str, got {type(value).__name__} {value!r}')
    return values


def service_name(node_name):
    """Return the set_parameters_atomically service of a node name ('semseg', '/ns/semseg')."""
    name = str(node_name).strip().rstrip('/')
    if not name or name == '/':
        raise ValueError('node_name must name the node, e.g. /semseg')
    return ('' if name.startswith('/') else '/') + name + '/set_parameters_atomically'


def deploy(node_name, weights, backend='auto', timeout=120.0, classes=None, options=None,
           extra=None, domain_id=None):
    """
    Set the model of a running node atomically and return its answer as a DeployResult.

    weights: the model file (a path as the node sees it; an existing local relative path is
    made absolute). backend: model.backend. classes: the class set (None leaves the node's
    value; '' = the model's own). options: model.options as a dict or YAML text (None leaves
    the node's value; {} clears it). extra: further parameters in the same call, {name:
    bool, int, float, str or list of str}, e.g. {'precision': 'fp16', 'max_batch': 4}.
    timeout: seconds for the whole call, the node's load included. domain_id: the ROS domain
    (None: ROS_DOMAIN_ID). Raises DeployError when the node does not answer in time.
    """
    values = parameters(weights, backend, classes, options, extra)
    service = service_name(node_name)
    start = time.monotonic()
    deadline = start + float(timeout)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = None
    try:
        node = rclpy.create_node(f'semseg_deploy_{os.getpid()}', context=context,
                                 start_parameter_services=False)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        client = node.create_client(SetParametersAtomically, service)
        if not client.wait_for_service(timeout_sec=max(deadline - time.monotonic(), 0.0)):
            raise DeployError(f'no node answers at {service} within {timeout:g} s: is it '
                              'running, in this ROS domain, under that name?')
        # An empty atomic set changes nothing; once one is answered, replies reach us (a
        # request sent right after a client appears may have its reply lost in discovery).
        while True:
            future = client.call_async(SetParametersAtomically.Request())
            executor.spin_until_future_complete(
                future, timeout_sec=min(PROBE_SECONDS, max(deadline - time.monotonic(), 0.0)))
            if future.done():
                break
            client.remove_pending_request(future)
            if time.monotonic() >= deadline:
                raise DeployError(f'{service} does not answer (waited {timeout:g} s)')
        request = SetParametersAtomically.Request(parameters=[
            Parameter(name=name, value=_value(value)) for name, value in values.items()])
        future = client.call_async(request)
        executor.spin_until_future_complete(
            future, timeout_sec=max(deadline - time.monotonic(), 0.0))
        if not future.done():
            client.remove_pending_request(future)
            raise DeployError(
                f'{service} did not answer within {timeout:g} s: the node may still be loading '
                'the model; its log and /diagnostics (status "<node>: model") give the outcome')
        result = future.result().result
        return DeployResult(result.successful, result.reason, time.monotonic() - start, values)
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)


def main(argv=None):
    """Command line: deploy a model file to a running node; exit 0 when it runs."""
    parser = argparse.ArgumentParser(
        prog='python -m semseg_ros.deploy',
        description='Swap the model of a running semseg node (one atomic parameter call).')
    parser.add_argument('node', help='node name, e.g. /semseg')
    parser.add_argument('weights', help='model file, as the node sees it')
    parser.add_argument('--backend', default='auto', help='model.backend (default: auto)')
    parser.add_argument('--classes', help='class set (name or YAML path); default: unchanged')
    parser.add_argument('--options', help='model.options as YAML; default: unchanged')
    parser.add_argument('--timeout', type=float, default=120.0,
                        help='seconds to wait for the answer, loading included')
    args = parser.parse_args(argv)
    try:
        result = deploy(args.node, args.weights, args.backend, args.timeout, args.classes,
                        args.options)
    except (DeployError, ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    if not result.successful:
        print(f'refused: {result.reason}', file=sys.stderr)
        return 1
    print(f'{args.node} runs {result.parameters["model.weights"]} '
          f'({result.seconds:.1f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
