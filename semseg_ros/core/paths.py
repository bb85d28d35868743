"""Where the installed data files of semseg_ros (config/, launch/) are."""

import os
from pathlib import Path
import sys

PACKAGE = 'semseg_ros'


def share_dirs():
    """
    Return the folders that may be semseg_ros's share directory, most specific first.

    The ament index (AMENT_PREFIX_PATH, set by a sourced workspace or an activated venv), then
    the prefix of the running interpreter (``sys.prefix/share/semseg_ros``: a venv used as
    ``.venv/bin/...`` without activation), then the prefix the package was installed into
    (found from the package's location, e.g. a colcon install folder), then the source tree.
    """
    folders = []
    try:
        from ament_index_python.packages import get_package_share_directory
        folders.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # noqa: B902 - not installed or no ament index: look further
        pass
    folders.append(Path(sys.prefix) / 'share' / PACKAGE)
    package_dir = Path(__file__).resolve().parents[1]
    for ancestor in package_dir.parents:
        if ancestor.name in ('lib', 'lib64'):  # <prefix>/lib/pythonX.Y/site-packages
            folders.append(ancestor.parent / 'share' / PACKAGE)
            break
    folders.append(package_dir.parent)  # the source tree: config/ beside semseg_ros/
    unique = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def find_data(*parts):
    """Return the first existing share_dirs()/parts as a Path, or None."""
    for folder in share_dirs():
        path = folder.joinpath(*parts)
        if path.exists():
            return path
    return None


def describe():
    """Return the searched share folders as one line, for error messages."""
    return ', '.join(os.fspath(f) for f in share_dirs())
