"""The README's tables match the code."""

from pathlib import Path

from semseg_ros.core import settings
from semseg_ros.node import OUTPUT_TOPICS

README = (Path(__file__).resolve().parents[1] / 'README.md').read_text()


def test_every_parameter_is_documented():
    missing = [s.name for s in settings.PARAMETERS if f'| `{s.name}` |' not in README]
    assert not missing, f'parameters missing from the README table: {missing}'


def test_change_column_matches_the_specs():
    for spec in settings.PARAMETERS:
        row = next(line for line in README.splitlines() if line.startswith(f'| `{spec.name}` |'))
        change = row.rstrip().rstrip('|').rsplit('|', 1)[1].strip()
        assert change == spec.change, spec.name


def test_every_output_topic_is_documented():
    for topic in OUTPUT_TOPICS.values():
        assert f'`{topic}`' in README, topic
