"""
Nothing fatal, nothing silent: guards around a lifecycle node's transitions and callbacks.

rclpy swallows an exception raised in a lifecycle transition callback without a log line (the
transition just reports failure), and an exception in any other callback (a service handler
given a malformed request, a timer) propagates out of the executor and ends the process. This
module closes both gaps:

- `transition(name)` decorates a transition callback (`on_configure`, ...): any exception is
  logged with its type, message and place, reported through the node's `report_error`, and
  turned into TransitionCallbackReturn.ERROR, so rclpy runs `on_error`, which releases
  everything; `error_outcome()` then ends in *unconfigured* (or *finalized* when the failed
  transition was a shutdown). An exception in `on_error` itself ends in *finalized*.
- `CallbackGuard` wraps every service of a node so that a request its handler cannot take
  (a `set_parameters` value of an unknown type, a `change_state` to an unregistered
  transition) gets a failure response naming the reason, and `spin()` keeps the executor
  running when any other callback raises. Each failure is counted (for diagnostics) and
  logged, at most once per `throttle` seconds with the number of failures in between.
- `FaultPlan`, a test hook: `SEMSEG_ROS_FAULTS=configure:KeyError,shutdown` raises the named
  exception (default RuntimeError) once in each listed transition, after the transition's
  own work, so that everything it built must be released. Unset in normal use.

ROS types are imported lazily where they are needed; the module imports rclpy only for the
transition return codes.
"""

import builtins
import functools
import os
import threading
import time
import traceback

from rclpy.lifecycle import TransitionCallbackReturn

FAULTS_ENV = 'SEMSEG_ROS_FAULTS'
TRANSITIONS = ('configure', 'activate', 'deactivate', 'cleanup', 'shutdown', 'error')


class InjectedFault(Exception):
    """The default exception a FaultPlan raises (not a builtin: any type must be handled)."""


def describe(exc):
    """Return 'Type: message (at file:line in function)' for an exception, never raising."""
    try:
        text = str(exc)
    except Exception:  # noqa: B902 - a broken __str__ must not hide the failure
        text = '<message unavailable>'
    name = type(exc).__name__
    where = ''
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if frames:
        last = frames[-1]
        where = f' (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})'
    return f'{name}: {text}{where}' if text else f'{name}{where}'


class FaultPlan:
    """Faults to raise once in lifecycle transitions (a test hook, from SEMSEG_ROS_FAULTS)."""

    def __init__(self, text=''):
        """Parse 'transition[:ExceptionType],...'; unknown entries go to self.problems."""
        self.pending = []  # (transition, exception class), fired in order, each once
        self.problems = []
        for item in (text or '').split(','):
            item = item.strip()
            if not item:
                continue
            name, _, kind = item.partition(':')
            name, kind = name.strip(), kind.strip()
            if name not in TRANSITIONS:
                self.problems.append(f'{FAULTS_ENV}: unknown transition {name!r} in {item!r}; '
                                     f'one of {", ".join(TRANSITIONS)}')
                continue
            cls = (InjectedFault if kind in ('', 'InjectedFault')
                   else getattr(builtins, kind, None))
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                self.problems.append(f'{FAULTS_ENV}: {kind!r} in {item!r} is not a built-in '
                                     'exception type')
                continue
            self.pending.append((name, cls))

    @classmethod
    def from_env(cls, environ=None):
        """Return the plan of the SEMSEG_ROS_FAULTS environment variable (empty if unset)."""
        return cls((os.environ if environ is None else environ).get(FAULTS_ENV, ''))

    def fire(self, transition):
        """Raise the next fault planned for this transition, if any (each fires once)."""
        for i, (name, cls) in enumerate(self.pending):
            if name == transition:
                del self.pending[i]
                raise cls(f'fault injected in {transition} ({FAULTS_ENV})')


class TransitionGuard:
    """Report transition failures and decide where the error recovery ends."""

    def __init__(self, logger, report, faults=None):
        """report(text) is called with each failure's message (e.g. to set diagnostics)."""
        self.logger = logger
        self.report = report
        self.faults = faults if faults is not None else FaultPlan()
        self.failed = None  # the transition that failed last, until the recovery ran
        for problem in self.faults.problems:
            logger.error(problem)

    def fail(self, name, exc):
        """Log and report an exception in transition `name`; return the code for rclpy."""
        text = f'{name} failed: {describe(exc)}'
        details = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if name == 'error':
            text = f'error recovery failed: {describe(exc)}'
            self.logger.error(f'{text}. The node is finalized: restart it.\n{details}')
            self.report(text + '; the node is finalized')
            return TransitionCallbackReturn.FAILURE
        self.failed = name
        follow = ('The node releases everything and ends finalized' if name == 'shutdown'
                  else 'The node releases everything and returns to unconfigured: configure '
                       'it again')
        self.logger.error(f'{text}. {follow}.\n{details}')
        self.report(text)
        return TransitionCallbackReturn.ERROR

    def error_outcome(self):
        """Return on_error's code: SUCCESS (to unconfigured), FAILURE after a shutdown."""
        failed, self.failed = self.failed, None
        if failed == 'shutdown':
            return TransitionCallbackReturn.FAILURE  # errorprocessing -> finalized
        return TransitionCallbackReturn.SUCCESS


def transition(name):
    """Guard a LifecycleNode transition method; the node needs a `transition_guard`."""
    def decorate(method):
        @functools.wraps(method)
        def guarded(node, state):
            guard = node.transition_guard
            try:
                result = method(node, state)
                guard.faults.fire(name)
            except Exception as exc:  # noqa: B902 - any type: rclpy would swallow it silently
                return guard.fail(name, exc)
            if name == 'error' and result == TransitionCallbackReturn.SUCCESS:
                return guard.error_outcome()
            return result
        return guarded
    return decorate


class CallbackGuard:
    """Count, log (throttled) and survive failing callbacks; answer malformed requests."""

    def __init__(self, logger, throttle=5.0, clock=time.monotonic):
        """Log at most one line per `throttle` seconds (of `clock`)."""
        self.logger = logger
        self.throttle = throttle
        self.clock = clock
        self.count = 0
        self.last = ''
        self.last_time = None
        self._suppressed = 0
        self._logged_at = None
        self._lock = threading.Lock()

    def failed(self, where, exc):
        """Record one failure of a callback; return its description."""
        text = f'{where}: {describe(exc)}'
        now = self.clock()
        with self._lock:
            self.count += 1
            self.last = text
            self.last_time = now
            if self._logged_at is not None and now - self._logged_at < self.throttle:
                self._suppressed += 1
                return text
            suppressed, self._suppressed, self._logged_at = self._suppressed, 0, now
        more = f' ({suppressed} more since the last report)' if suppressed else ''
        self.logger.error(f'callback failed, the node keeps running: {text}{more}')
        return text

    def recent(self, seconds):
        """Return True when a callback failed within the last `seconds`."""
        with self._lock:
            return self.last_time is not None and self.clock() - self.last_time < seconds

    def values(self):
        """Return diagnostics values: the failure count and the last failure."""
        with self._lock:
            return {'callback errors': str(self.count), 'last callback error': self.last}

    def guard_services(self, node):
        """Wrap the callback of every service of `node` (parameters, lifecycle, ...)."""
        for service in node.services:
            if not getattr(service.callback, '_semseg_guarded', False):
                service.callback = self._guarded_service(service)

    def _guarded_service(self, service):
        from rcl_interfaces.srv import SetParameters

        callback, kind, name = service.callback, service.srv_type, service.srv_name

        def guarded(request, response):
            try:
                return callback(request, response)
            except Exception as exc:  # noqa: B902 - a request must never end the process
                return failure_response(kind, request, self.failed(f'service {name}', exc))

        def set_each(request, response):
            # rclpy sets the parameters of one request one by one: so does this, so that
            # one parameter it cannot take fails alone and the others keep their result.
            for parameter in request.parameters:
                single = SetParameters.Request(parameters=[parameter])
                response.results.extend(guarded(single, SetParameters.Response()).results)
            return response

        wrapper = set_each if kind is SetParameters else guarded
        wrapper._semseg_guarded = True
        return wrapper

    def spin(self, node, executor=None, until=None):
        """Spin `node` until its context shuts down (or `until` is done); survive callbacks."""
        from rclpy.executors import ExternalShutdownException
        from rclpy.executors import SingleThreadedExecutor

        executor = executor or SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        try:
            while node.context.ok() and not (until is not None and until.done()):
                try:
                    executor.spin_once(timeout_sec=0.5)
                except ExternalShutdownException:
                    raise
                except Exception as exc:  # noqa: B902 - the executor must outlive a callback
                    self.failed('callback', exc)
        finally:
            executor.remove_node(node)


def failure_response(kind, request, text):
    """Return a response of service type `kind` that says the request failed, and why."""
    from lifecycle_msgs.srv import ChangeState
    from rcl_interfaces.msg import SetParametersResult
    from rcl_interfaces.srv import SetParameters
    from rcl_interfaces.srv import SetParametersAtomically

    response = kind.Response()
    reason = f'request refused: {text}'
    if kind is SetParameters:
        response.results = [SetParametersResult(successful=False, reason=reason)
                            for _ in request.parameters]
    elif kind is SetParametersAtomically:
        response.result = SetParametersResult(successful=False, reason=reason)
    elif kind is ChangeState:
        response.success = False
    return response


def sim_clock_problem(clock):
    """Return a message when the node runs on simulated time that never arrived, else ''."""
    if clock.ros_time_is_active and clock.now().nanoseconds == 0:
        return ('use_sim_time is true but no /clock message has arrived: timers run on the '
                'steady clock; output stamps and latencies need /clock')
    return ''
