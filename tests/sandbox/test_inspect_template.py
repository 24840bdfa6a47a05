"""``--format`` templates as Docker's Go templates print inspect data."""

from __future__ import annotations

from sandbox._inspect import format_template

DATA = {"Config": {"Cmd": None, "Entrypoint": None, "Labels": None, "ExposedPorts": None,
                   "Env": ["A=1", "B=2"], "User": "", "StopTimeout": None},
        "State": {"Running": True, "Pid": 42}}


def test_a_nil_slice_or_map_field_prints_as_its_empty_go_value():
    """Docker executes the template on typed structs: a nil ``[]string`` prints ``[]`` and a
    nil map ``map[]`` (``docker inspect -f '{{.Config.Entrypoint}}'`` of an image without
    one); ``json`` still shows the null, and an untyped nil prints ``<no value>``."""
    assert format_template("{{.Config.Cmd}}|{{.Config.Entrypoint}}|{{.config.labels}}|"
                           "{{.Config.ExposedPorts}}", DATA) == "[]|[]|map[]|map[]"
    assert format_template("{{json .Config.Cmd}}", DATA) == "null"
    assert format_template("{{.Config.StopTimeout}}|{{.Config.Nothing}}", DATA) == \
        "<no value>|<no value>"


def test_values_print_as_go_prints_them():
    assert format_template("{{.Config.Env}} {{.State.Running}} {{.State.Pid}}", DATA) == \
        "[A=1 B=2] true 42"
    assert format_template("{{join .Config.Env \",\"}}\\t{{len .Config.Env}}", DATA) == \
        "A=1,B=2\t2"
    assert format_template("x{{.Config.User}}y", DATA) == "xy"
