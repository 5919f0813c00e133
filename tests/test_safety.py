"""Values from outside never reach a shell, a path or a command unquoted."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from remediator.clients.coordinator import HostRecord
from remediator.clients.ssh import quote_template
from remediator.exceptions import CoordinatorError, InvalidHostId
from remediator.hosts import recovery_path
from workers.steps.recover_data import import_argv

GOOD = {
    "state": "critical",
    "last_sync": 1.0,
    "retired": False,
    "address": "10.0.0.7",
    "ssh_user": "ringrift",
    "ssh_port": 22,
    "provider": "vast",
    "instance_id": "42",
    "data_dir": "/data/selfplay",
}


def test_recovery_path_is_one_folder_below_the_recovery_dir(tmp_path):
    assert recovery_path(tmp_path, "host-01") == (tmp_path / "host-01").resolve()


@pytest.mark.parametrize("host_id", ["..", "../etc", "a/b", "/abs", "", ".hidden", "x" * 64])
def test_recovery_path_refuses_anything_that_is_not_a_host_id(tmp_path, host_id):
    with pytest.raises(InvalidHostId):
        recovery_path(tmp_path, host_id)


def test_import_command_placeholders_become_exactly_one_argument_each():
    hostile_dir = "/data/recovered/h1; rm -rf / #"
    argv = import_argv(
        "python import.py --data-dir {data_dir} --host {host_id} --trigger-sync", hostile_dir, "h1"
    )
    assert argv == ["python", "import.py", "--data-dir", hostile_dir, "--host", "h1", "--trigger-sync"]


def test_quoted_template_passes_a_hostile_value_to_the_shell_as_data(tmp_path):
    hostile = "$(touch pwned); `touch pwned2` 'quote\" * ?"
    command = quote_template("printf %s {value}", value=hostile)
    out = subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout == hostile
    assert list(tmp_path.iterdir()) == []
    assert shlex.split(command) == ["printf", "%s", hostile]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("address", "10.0.0.7; reboot"),
        ("address", "$(id)"),
        ("ssh_user", "root -oProxyCommand=sh"),
        ("ssh_user", "-oProxyCommand=x"),
        ("data_dir", "/data/../etc"),
        ("data_dir", "relative/path"),
        ("data_dir", "/data/self play"),
        ("data_dir", "/data/x\n"),
        ("ssh_port", "22"),
        ("ssh_port", 70000),
    ],
)
def test_unsafe_coordinator_host_fields_are_refused(field, value):
    with pytest.raises(CoordinatorError, match=field):
        HostRecord.from_api("h1", {**GOOD, field: value})


@pytest.mark.parametrize(
    "data_dir",
    [
        "/",
        "/etc",
        "/etc/ringrift/selfplay",
        "/usr",
        "/usr/local/ringrift",
        "/bin",
        "/boot",
        "/proc/1/root",
        "/sys/kernel",
        "/dev/shm/selfplay",
        "/root",
        "/root/selfplay",
        "/var",
        "/var/lib/ringrift",
        "/run/selfplay",
        "/home",
        "/data",
        "/tmp",
        "/data/./selfplay",
        "//data/selfplay",
        "/data//selfplay",
        "/data/selfplay/..",
    ],
)
def test_data_dir_that_is_a_system_or_whole_top_level_directory_makes_the_record_unsafe(data_dir):
    with pytest.raises(CoordinatorError, match="unsafe data_dir"):
        HostRecord.from_api("h1", {**GOOD, "data_dir": data_dir})


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/data/selfplay/", "/data/selfplay"),
        ("/home/ringrift/selfplay", "/home/ringrift/selfplay"),
        ("/mnt/nvme0/selfplay", "/mnt/nvme0/selfplay"),
        (
            "/tmp/pytest-of-ci/sim/hosts/host-01/data/selfplay",
            "/tmp/pytest-of-ci/sim/hosts/host-01/data/selfplay",
        ),
    ],
)
def test_data_dir_of_its_own_is_accepted(given, kept):
    assert HostRecord.from_api("h1", {**GOOD, "data_dir": given}).data_dir == kept


@pytest.mark.parametrize(
    "sync_log", ["/etc/shadow", "/root/.ssh/id_ed25519", "/proc/self/environ", "/var/log/../../etc/x"]
)
def test_sync_log_in_a_tree_of_secrets_makes_the_record_unsafe(sync_log):
    with pytest.raises(CoordinatorError, match="sync_log"):
        HostRecord.from_api("h1", {**GOOD, "sync_log": sync_log})
    assert HostRecord.from_api("h1", {**GOOD, "sync_log": "/var/log/ringrift/sync.log"}).sync_log


def test_a_well_formed_coordinator_record_is_accepted():
    record = HostRecord.from_api("h1", GOOD)
    assert (record.address, record.ssh_user, record.ssh_port, record.data_dir) == (
        "10.0.0.7",
        "ringrift",
        22,
        "/data/selfplay",
    )


def test_retirement_needs_every_item_of_the_data_recovery_checklist():
    from workers.steps.retire import CHECKLIST_ITEMS, checklist_complete

    done = dict.fromkeys(CHECKLIST_ITEMS, True)
    assert checklist_complete(done)
    # A host whose unsynced games were never counted (no inventory, ever) is not retired on its own:
    # the loss could not be documented with a game count.
    for item in CHECKLIST_ITEMS:
        assert not checklist_complete({**done, item: False}), item
    assert set(CHECKLIST_ITEMS) >= {"unsynced_games_counted", "rsync_attempted", "loss_documented"}


def test_one_unsafe_coordinator_record_spoils_only_its_own_host(server):
    from remediator.clients.coordinator import HttpCoordinator

    server.expect_request("/sync/hosts", method="GET").respond_with_json(
        {"h1": GOOD, "h2": {**GOOD, "address": "$(id)"}, "../x": GOOD}
    )
    coordinator = HttpCoordinator(server.url_for("/"), admin_key=None)
    assert set(coordinator.hosts()) == {"h1"}  # discovery and the fleet view still see h1
    assert coordinator.host("h1") is not None
    with pytest.raises(CoordinatorError, match="address"):
        coordinator.host("h2")  # h2's own ladder is told why
