"""``--format`` templates: the Go text/template subset Docker users write."""

from __future__ import annotations

import pytest

from sandbox._template import render
from sandbox.errors import UsageError

DATA = {"Id": "0123456789abcdef", "Name": "/web",
        "Config": {"Cmd": None, "Entrypoint": None, "Labels": {"b": "2", "a": "1"},
                   "ExposedPorts": None, "Env": ["A=1", "B=2"], "User": "",
                   "StopTimeout": None},
        "State": {"Running": True, "Pid": 42, "ExitCode": 0},
        "Mounts": [{"Source": "/s1", "Destination": "/d1"},
                   {"Source": "/s2", "Destination": "/d2"}]}


def test_a_nil_slice_or_map_field_prints_as_its_empty_go_value():
    """Docker executes the template on typed structs: a nil ``[]string`` prints ``[]``, a nil
    map ``map[]``, a nil pointer ``<nil>``; ``json`` shows the null, and a key that is not
    there prints ``<no value>``, as in a Go map."""
    assert render("{{.Config.Cmd}}|{{.Config.Entrypoint}}|{{.Config.ExposedPorts}}", DATA) == \
        "[]|[]|map[]"
    assert render("{{json .Config.Cmd}}", DATA) == "null"
    assert render("{{.Config.StopTimeout}}|{{.Config.Nothing}}", DATA) == "<nil>|<no value>"


def test_values_print_as_go_prints_them():
    assert render("{{.Config.Env}} {{.State.Running}} {{.State.Pid}} {{.Config.Labels}}",
                  DATA) == "[A=1 B=2] true 42 map[a:1 b:2]"
    assert render("{{join .Config.Env \",\"}}\\t{{len .Config.Env}}", DATA) == "A=1,B=2\t2"
    assert render("x{{.Config.User}}y", DATA) == "xy"
    assert render("{{json .Config.Labels}}", DATA) == '{"b":"2","a":"1"}'  # compact, as Go's
    assert render("{{.config.labels.a}}", DATA) == "1"  # field names match in any case


def test_range_if_with_variables_and_pipelines():
    assert render("{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}", DATA) == \
        "/s1:/d1 /s2:/d2 "
    assert render("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}", DATA) == \
        "a=1;b=2;"
    assert render("{{range .Config.Cmd}}x{{else}}none{{end}}", DATA) == "none"
    assert render("{{if .State.Running}}up{{else}}down{{end}}", DATA) == "up"
    assert render("{{if eq .State.ExitCode 0}}ok{{end}}", DATA) == "ok"
    assert render("{{with .State}}{{.Pid}}{{end}}", DATA) == "42"
    assert render("{{range .Mounts}}{{$.Name}}{{end}}", DATA) == "/web/web"
    assert render("{{.Id | printf \"%.4s\"}} {{printf \"%d-%s\" .State.Pid .Name}}", DATA) == \
        "0123 42-/web"
    assert render("{{index .Config.Labels \"b\"}} {{index .Config.Env 1}}", DATA) == "2 B=2"
    assert render("{{upper .Name}} {{.Name | lower}} {{truncate .Id 3}}", DATA) == \
        "/WEB /web 012"
    assert render("{{- range .Mounts }}\n  {{ .Source -}}\n{{ end }}", DATA) == \
        "\n  /s1\n  /s2"
    assert render("{{range .Mounts -}}\n  {{- .Source}}{{end}}", DATA) == "/s1/s2"


def test_parenthesised_groups_as_docker_docs_use_them():
    """``docker inspect -f '{{(index (index .NetworkSettings.Ports "80/tcp") 0).HostPort}}'``"""
    data = {"NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "127.0.0.1",
                                                       "HostPort": "8080"}]}}}
    assert render('{{(index (index .NetworkSettings.Ports "80/tcp") 0).HostPort}}', data) == \
        "8080"
    assert render('{{len (index .NetworkSettings.Ports "80/tcp")}}', data) == "1"
    assert render('{{if (eq (len .NetworkSettings.Ports) 1)}}one{{end}}', data) == "one"
    for bad, message in (("{{(len .X}}", "unclosed left paren"),
                         ("{{len .X)}}", "unexpected right paren")):
        with pytest.raises(UsageError, match=message):
            render(bad, data)


@pytest.mark.parametrize(("fmt", "message"), [
    ("{{join .Config.Env}}", "template: wrong number of args for join: want 2 got 1"),
    ("{{upper}}", "template: wrong number of args for upper: want 1 got 0"),
    ("{{bogus .Id}}", 'template: function "bogus" not defined'),
    ("{{.Id", "template: unclosed action"),
    ("{{if .Id}}x", "template: unexpected EOF: {{if}} has no {{end}}"),
    ("{{end}}", "template: unexpected {{end}}"),
    ("{{index .Config.Env 5}}", "template: error calling index: index out of range: 5"),
    ("{{printf \"%s\" \"unterminated}}", "template: unterminated quoted string"),
])
def test_mistakes_are_one_line_errors(fmt, message):
    with pytest.raises(UsageError) as info:
        render(fmt, DATA)
    assert info.value.one_line().startswith(message)


def test_strict_rows_refuse_a_field_they_do_not_have():
    """Docker's rows (``ps``, ``images``) are Go structs: ``{{.Bogus}}`` is an error there; a
    key missing further down (a label) prints ``<no value>``."""
    with pytest.raises(UsageError, match="can't evaluate field Bogus"):
        render("{{.Bogus}}", DATA, strict=True)
    assert render("{{.Config.Labels.zz}}", DATA, strict=True) == "<no value>"
