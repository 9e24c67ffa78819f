"""
The fake qvm-* tools print and fail the way Qubes 4.2's and 4.3's do
(core-admin-client's tools), so the CLI backend is tested against the real
tools' conventions.
"""

import subprocess


def run(qubes, *argv):
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def test_qvm_ls_raw_data(qubes):
    out = run(qubes, "qvm-ls", "--raw-data", "--fields", "NAME,netvm,ip,provides_network,provides-network")
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and lines[0].startswith("build|")
    assert "dom0|-|-|-|-" in lines
    assert "sys-net|-|10.137.0.5|True|-" in lines  # underscore spelling only
    assert "work|sys-firewall|10.137.0.9|False|-" in lines
    assert "fedora-39-xfce|-|-|False|-" in lines
    names = [line.split("|")[0] for line in lines]
    assert names == sorted(names)


def test_qvm_prefs_get_set_and_errors(qubes):
    assert run(qubes, "qvm-prefs", "sys-net", "netvm").stdout == ""  # None prints nothing
    assert run(qubes, "qvm-prefs", "work", "provides-network").stdout == "False\n"
    listing = run(qubes, "qvm-prefs", "work").stdout.splitlines()
    assert "netvm             D  sys-firewall" in listing
    assert run(qubes, "qvm-prefs", "work", "netvm", "").returncode == 0
    assert "netvm             -" in run(qubes, "qvm-prefs", "work").stdout
    assert run(qubes, "qvm-prefs", "-D", "work", "netvm").returncode == 0
    assert run(qubes, "qvm-prefs", "work", "netvm").stdout == "sys-firewall\n"

    bad = run(qubes, "qvm-prefs", "work", "nosuch")
    assert bad.returncode == 2 and "qvm-prefs: error: no such property: 'nosuch'" in bad.stderr
    bad = run(qubes, "qvm-prefs", "work", "-D", "netvm")
    assert bad.returncode == 2
    bad = run(qubes, "qvm-prefs", "nope", "netvm")
    assert bad.returncode == 2 and "no such domain: 'nope'" in bad.stderr
    bad = run(qubes, "qvm-prefs", "build", "netvm", "work")
    assert bad.returncode == 1 and bad.stderr == "qvm-prefs: error: The work qube does not provide network\n"
    bad = run(qubes, "qvm-prefs", "sys-net", "netvm", "sys-firewall")
    assert bad.returncode == 1 and "Loops in network are unsupported" in bad.stderr


def test_qvm_firewall_list_add_del_and_errors(qubes):
    assert run(qubes, "qvm-firewall", "--raw", "work", "list").stdout == "action=accept\n"
    bad = run(qubes, "qvm-firewall", "work", "list", "--raw")
    assert bad.returncode == 2 and "unrecognized arguments: --raw" in bad.stderr
    ok = run(qubes, "qvm-firewall", "work", "add", "accept", "example.com", "tcp", "443")
    assert ok.returncode == 0
    ok = run(qubes, "qvm-firewall", "work", "add", "action=drop", "dst4=10.0.0.1", "comment=no lab, ever")
    assert ok.returncode == 0
    assert run(qubes, "qvm-firewall", "--raw", "work", "list").stdout.splitlines() == [
        "action=accept",
        "action=accept proto=tcp dsthost=example.com dstports=443-443",
        "action=drop dst4=10.0.0.1/32 comment=no lab, ever",
    ]
    bad = run(qubes, "qvm-firewall", "work", "add", "action=accept", "bogus=1")
    assert bad.returncode == 2 and "Invalid rule element: bogus=1" in bad.stderr
    bad = run(qubes, "qvm-firewall", "work", "add", "action=accept", "proto=tcp", "dstports=70000")
    assert bad.returncode == 1 and "Traceback" in bad.stderr and "Ports out of range" in bad.stderr
    assert run(qubes, "qvm-firewall", "work", "del", "--rule-no", "0").returncode == 0
    assert len(run(qubes, "qvm-firewall", "--raw", "work", "list").stdout.splitlines()) == 2
    assert run(qubes, "qvm-firewall", "work", "reset").returncode == 0
    assert run(qubes, "qvm-firewall", "--raw", "work", "list").stdout == "action=accept\n"


def test_qvm_features_and_qvm_service(qubes):
    assert run(qubes, "qvm-service", "sys-vpn", "qubes-firewall", "off").returncode == 0
    assert run(qubes, "qvm-features", "sys-vpn").stdout == "service.qubes-firewall  \n"
    assert run(qubes, "qvm-service", "sys-vpn").stdout == "qubes-firewall  off\n"
    missing = run(qubes, "qvm-features", "sys-vpn", "os")
    assert missing.returncode == 1 and missing.stdout == ""


def qubes_4_3(data):
    """A Qubes 4.3 install: Debian 13 template, disposable sys-firewall with custom-persist."""
    data["qubes"]["debian-13-xfce"] = {"klass": "TemplateVM", "qid": 30, "state": "Halted", "template": None,
                                       "props": {}, "features": {"os": "Linux"}}
    data["qubes"]["default-dvm"]["template"] = "debian-13-xfce"
    data["qubes"]["sys-firewall"].update(klass="DispVM", dispid=6, template="default-dvm")


def test_a_4_3_machine_with_custom_persist_through_both_backends(qubes, backend):
    from conftest import Dom0, full_pillar

    qubes.edit(qubes_4_3)
    assert run(qubes, "qvm-service", "sys-firewall", "custom-persist", "on").returncode == 0
    assert run(qubes, "qvm-features", "sys-firewall", "service.custom-persist").stdout == "1\n"
    lines = run(qubes, "qvm-ls", "--raw-data", "--fields", "name,klass,template").stdout.splitlines()
    assert "sys-firewall|DispVM|default-dvm" in lines
    assert "default-dvm|AppVM|debian-13-xfce" in lines
    assert "debian-13-xfce|TemplateVM|-" in lines and "dom0|AdminVM|-" in lines

    d = Dom0(full_pillar())
    inv = d.qubes_firewall_qubes.inventory()
    assert inv["sys-firewall"]["klass"] == "DispVM" and inv["sys-firewall"]["disposable"]
    assert inv["sys-firewall"]["ip"] == "10.138.0.6"  # a named disposable's address
    assert d.qubes_firewall_dom0.root_template("sys-firewall", inv) == "debian-13-xfce"
    assert d.qubes_firewall_qubes.features("sys-firewall") == {"service.custom-persist": "1"}
    assert run(qubes, "qvm-service", "sys-firewall", "custom-persist", "off").returncode == 0
    d.new_run()
    assert d.qubes_firewall_qubes.features("sys-firewall") == {"service.custom-persist": ""}
