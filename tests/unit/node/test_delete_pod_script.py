"""emu_delete_pod (emu.node.plan.cni.DELETE_POD_FUNCTION) run by dash, the nodes'
/bin/sh: every process named in the pod's pid files gets its SIGTERM, also when
another pid file says "none" (an image container Docker has not started again).
Found in the suite: dash's kill stopped at "none" and never signalled the
sandbox, so each such pod's removal waited out its whole grace period."""

import subprocess

from emu.node.agent import RUN_DIR
from emu.node.plan import cni


def test_a_pid_file_that_says_none_does_not_spare_the_others(tmp_path):
    run_dir = tmp_path / "run"
    function = cni.DELETE_POD_FUNCTION.replace(RUN_DIR, str(run_dir))
    netns = "emutest-delete-pod"
    (run_dir / netns).mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (run_dir / netns / "app.pid").write_text("none\n")
        (run_dir / netns / "sandbox.pid").write_text(f"{sleeper.pid}\n")
        # NETNS VETH IP replaced GRACE: "replaced" keeps emu_delete_pod away from the node's other directories.
        script = f"{function}\nemu_delete_pod {netns} emutest-none 192.0.2.1 replaced 0\n"
        subprocess.run(["dash", "-c", script], check=True, timeout=30, capture_output=True)
        assert sleeper.wait(timeout=10) == -15  # SIGTERM
        assert list((run_dir / netns).iterdir()) == []
    finally:
        sleeper.kill()
