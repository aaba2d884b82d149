"""Drives a Pirus runner with the stock TES client py-tes 1.1 (what the TES tests run).

Usage: pytes11.py <runner url> <token> <catalogue file id> <another user's token>
Asserts as it goes; prints one JSON object the Rust test checks further (the output file ids
to read back from the catalogue).
"""
import json
import sys
import time

import requests
import tes

url, token, file_id, other_token = sys.argv[1:5]
cli = tes.HTTPClient(url, token=token, timeout=30)
headers = {"Authorization": f"Bearer {token}"}
base = f"{url}/ga4gh/tes/v1"


def wait(task_id, states, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        task = cli.get_task(task_id, view="MINIMAL")
        if task.state in states:
            return task
        time.sleep(0.3)
    raise AssertionError(f"task {task_id} never reached {states}: {task.state}")


def done(task_id):
    return wait(task_id, ["COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"])


info = cli.get_service_info()
assert "pirus://files/" in info.storage, info
assert info.type["artifact"] == "tes", info

# Inputs (content and a catalogue file), executors in order with env, workdir, stdin, stdout,
# ignore_error, and outputs (one file and a wildcard) back into the catalogue.
io = cli.create_task(tes.Task(
    name="pytes-io",
    description="the whole round trip",
    tags={"suite": "pytes11", "kind": "io"},
    inputs=[
        tes.Input(path="/data/in/greeting.txt", content="hello from tes\n"),
        tes.Input(path="/data/in/reads.txt", url=f"pirus://files/{file_id}", type="FILE"),
    ],
    outputs=[
        tes.Output(path="/data/out/count.txt", url="pirus://files/"),
        tes.Output(path="/data/out/*.log", url="pirus://files/", path_prefix="/data/out"),
        tes.Output(path="/data/out/copy.txt", url="pirus://files/"),
    ],
    executors=[
        tes.Executor(image="alpine", command=[
            "sh", "-c",
            "cat /data/in/greeting.txt; wc -l < /data/in/reads.txt > /data/out/count.txt;"
            " echo a > /data/out/a.log; echo b > /data/out/b.log"]),
        tes.Executor(image="alpine:1.0.0", command=["sh", "-c", "echo oops >&2; exit 3"],
                     ignore_error=True),
        tes.Executor(image="alpine", command=["sh", "-c", "cat; pwd; echo $GREETING"],
                     stdin="/data/in/greeting.txt", stdout="/data/out/copy.txt",
                     workdir="/data/work", env={"GREETING": "hi there"}),
    ],
))
failing = cli.create_task(tes.Task(name="pytes-fail", tags={"suite": "pytes11"}, executors=[
    tes.Executor(image="alpine", command=["sh", "-c", "echo before; exit 5"]),
    tes.Executor(image="alpine", command=["echo", "never"]),
]))
s3 = cli.create_task(tes.Task(name="pytes-s3", tags={"suite": "pytes11"},
                              inputs=[tes.Input(path="/data/x", url="s3://bucket/x")],
                              executors=[tes.Executor(image="alpine", command=["true"])]))
sleeper = cli.create_task(tes.Task(name="pytes-cancel", tags={"suite": "pytes11"}, executors=[
    tes.Executor(image="alpine", command=["sleep", "300"])]))

# An unknown image is refused, naming it.
r = requests.post(f"{base}/tasks", headers=headers, json={
    "executors": [{"image": "no-such-pipeline", "command": ["true"]}]})
assert r.status_code == 400 and "no-such-pipeline" in r.text, (r.status_code, r.text)

# A cancel while RUNNING.
wait(sleeper, ["RUNNING"])
cli.cancel_task(sleeper)
assert done(sleeper).state == "CANCELED"

assert done(io).state == "COMPLETE", cli.get_task(io, view="FULL")
full = cli.get_task(io, view="FULL")
assert full.name == "pytes-io" and full.tags == {"suite": "pytes11", "kind": "io"}
assert full.inputs[0].content == "hello from tes\n"
assert len(full.logs) == 1, full.logs
log = full.logs[0]
assert [e.exit_code for e in log.logs] == [0, 3, 0], log.logs
assert "hello from tes" in log.logs[0].stdout, log.logs[0]
assert "oops" in log.logs[1].stderr, log.logs[1]
outputs = {o.path: o for o in log.outputs}
assert set(outputs) == {"/data/out/count.txt", "/data/out/a.log", "/data/out/b.log",
                        "/data/out/copy.txt"}, outputs
for o in log.outputs:
    assert o.url.startswith("pirus://files/") and int(o.size_bytes) > 0, o
basic = cli.get_task(io, view="BASIC")
assert basic.inputs[0].content is None and basic.logs[0].logs[0].stdout is None
assert basic.logs[0].system_logs is None and basic.executors[2].stdin == "/data/in/greeting.txt"
minimal = requests.get(f"{base}/tasks/{io}", headers=headers).json()
assert minimal == {"id": io, "state": "COMPLETE"}, minimal

f = cli.get_task(failing, view="FULL")
assert done(failing).state == "EXECUTOR_ERROR"
f = cli.get_task(failing, view="FULL")
assert [e.exit_code for e in f.logs[0].logs] == [5], f.logs
assert "before" in f.logs[0].logs[0].stdout

assert done(s3).state == "SYSTEM_ERROR"
s = cli.get_task(s3, view="FULL")
assert any("inputs[0]" in line and "s3://bucket/x" in line for line in s.logs[0].system_logs), s

# Lists: views, every filter, paging.
def listing(**params):
    r = requests.get(f"{base}/tasks", headers=headers, params=params)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()

mine = {io, failing, s3, sleeper}
assert {t.id for t in cli.list_tasks(view="MINIMAL").tasks} == mine
assert [t["id"] for t in listing(name_prefix="pytes-io")["tasks"]] == [io]
assert [t["id"] for t in listing(state="EXECUTOR_ERROR")["tasks"]] == [failing]
assert [t["id"] for t in listing(state="SYSTEM_ERROR")["tasks"]] == [s3]
assert [t["id"] for t in listing(state="CANCELED")["tasks"]] == [sleeper]
assert [t["id"] for t in listing(tag_key=["kind", "suite"], tag_value=["io", "pytes11"])["tasks"]] == [io]
assert {t["id"] for t in listing(tag_key="suite")["tasks"]} == mine
assert listing(tag_key="suite", tag_value="other")["tasks"] == []
seen, token = [], None
while True:
    page = cli.list_tasks(view="BASIC", page_size=1, page_token=token)
    assert len(page.tasks) <= 1
    seen += [t.id for t in page.tasks]
    token = page.next_page_token
    if not token:
        break
assert sorted(seen) == sorted(mine) and len(seen) == 4, seen
assert requests.get(f"{base}/tasks", headers=headers, params={"page_size": 5000}).status_code == 400
assert requests.get(f"{base}/tasks", headers=headers, params={"view": "HUGE"}).status_code == 400

# Another user sees none of it.
other = tes.HTTPClient(url, token=other_token, timeout=30)
assert other.list_tasks(view="MINIMAL").tasks in (None, [])
try:
    other.get_task(io)
    raise AssertionError("another user read the task")
except requests.exceptions.HTTPError as e:
    assert e.response.status_code == 404, e
r = requests.post(f"{base}/tasks/{sleeper}:cancel",
                  headers={"Authorization": f"Bearer {other_token}"})
assert r.status_code == 404, r.status_code

print(json.dumps({"io": io, "outputs": {o.path: o.url for o in log.outputs}}))
