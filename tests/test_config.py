import pytest

from ehc.wire.settings import ProbeSettings, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("300us", 0.0003),
        ("0", 0.0),
        (".5s", 0.5),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "abc", "1x", "s", "1s2", "--1s"])
def test_bad_durations_say_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as err:
        parse_duration(text)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize("seconds", [0.5, 1.0, 90.0, 0.05, 2.5])
def test_format_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("interval", 0.0, "interval"), ("timeout", -1.0, "timeout"), ("retry_count", -1, "retry count"),
     ("recovery_threshold", 0, "recovery threshold")],
)  # fmt: skip
def test_settings_validation_names_the_field(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProbeSettings(**{field: value}).validate()
