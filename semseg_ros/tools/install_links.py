"""
Make a pip install of semseg_ros look like a colcon install to `ros2 launch`.

`launch_ros` looks for executables in `<prefix>/lib/semseg_ros/`, where colcon puts them
(setup.cfg). A plain `pip install` only writes `<prefix>/bin/`; this links each console script
there. It also makes the venv's activate script export AMENT_PREFIX_PATH so that
`get_package_share_directory('semseg_ros')` finds the installed share directory.
"""

import os
import sys

PACKAGE = 'semseg_ros'
SCRIPTS = ('semseg_node', 'camera_source')
MARKER = '# semseg_ros: ament prefix'


def link_scripts(prefix):
    """Link the console scripts from `<prefix>/bin` into `<prefix>/lib/semseg_ros`."""
    lib_dir = os.path.join(prefix, 'lib', PACKAGE)
    os.makedirs(lib_dir, exist_ok=True)
    for name in SCRIPTS:
        source = os.path.join(prefix, 'bin', name)
        target = os.path.join(lib_dir, name)
        if not os.path.exists(source):
            raise FileNotFoundError(
                f'console script {source} is missing: is semseg_ros installed?')
        if os.path.lexists(target):
            os.remove(target)
        os.symlink(source, target)


def export_prefix(prefix):
    """Append an AMENT_PREFIX_PATH export to `<prefix>/bin/activate` once."""
    activate = os.path.join(prefix, 'bin', 'activate')
    if not os.path.exists(activate):
        return
    with open(activate) as f:
        if MARKER in f.read():
            return
    with open(activate, 'a') as f:
        f.write(f'\n{MARKER}\n'
                'case ":${AMENT_PREFIX_PATH:-}:" in *":$VIRTUAL_ENV:"*) ;; *) '
                'export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"'
                ' ;; esac\n')


def main():
    """Entry point: prepare the running interpreter's prefix."""
    link_scripts(sys.prefix)
    export_prefix(sys.prefix)


if __name__ == '__main__':
    main()
