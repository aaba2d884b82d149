"""Drives a Pirus runner with py-tes 0.4 (what Snakemake's TES executor pins): /v1 paths only,
TES 1.0 states, and models that reject keys they do not know.

Usage: pytes04.py <runner url> <token> <another user's token>
Asserts as it goes; prints the ids of the tasks it made, as JSON.
"""
import json
import sys
import time

import requests
import tes

url, token, other_token = sys.argv[1:4]
cli = tes.HTTPClient(url, token=token, timeout=30)

info = cli.get_service_info()
assert "pirus://files/" in info.storage, info


def done(task_id, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        task = cli.get_task(task_id, view="MINIMAL")
        if task.state in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"):
            return task
        time.sleep(0.3)
    raise AssertionError(f"task {task_id} did not end")


ok = cli.create_task(tes.Task(
    name="pytes04-ok",
    tags={"client": "pytes04"},
    resources=tes.Resources(cpu_cores=1, ram_gb=0.25),
    inputs=[tes.Input(path="/data/in.txt", content="one\ntwo\n")],
    outputs=[tes.Output(path="/data/out.txt", url="pirus://files/")],
    executors=[tes.Executor(image="alpine", command=["sh", "-c", "wc -l < /data/in.txt > /data/out.txt; echo counted"])],
))
bad = cli.create_task(tes.Task(name="pytes04-bad", executors=[
    tes.Executor(image="alpine", command=["sh", "-c", "exit 2"])]))
sleeper = cli.create_task(tes.Task(name="pytes04-cancel", executors=[
    tes.Executor(image="alpine", command=["sleep", "300"])]))
cli.cancel_task(sleeper)

assert done(ok).state == "COMPLETE"
assert done(bad).state == "EXECUTOR_ERROR"
assert done(sleeper).state == "CANCELED"

# Every view parses with the 1.0 models (they raise on a key they do not know).
for view in ("MINIMAL", "BASIC", "FULL"):
    task = cli.get_task(ok, view=view)
    assert task.id == ok and task.state == "COMPLETE", task
full = cli.get_task(ok, view="FULL")
assert full.logs[0].logs[0].exit_code == 0 and "counted" in full.logs[0].logs[0].stdout
assert full.logs[0].outputs[0].path == "/data/out.txt"
assert str(full.logs[0].outputs[0].size_bytes) == "2", full.logs[0].outputs
assert cli.get_task(bad, view="FULL").logs[0].logs[0].exit_code == 2

seen, page_token = [], None
while True:
    page = cli.list_tasks(view="FULL", page_size=2, page_token=page_token)
    seen += [t.id for t in page.tasks]
    page_token = page.next_page_token
    if not page_token:
        break
assert sorted(seen) == sorted([ok, bad, sleeper]), seen

other = tes.HTTPClient(url, token=other_token, timeout=30)
assert not other.list_tasks().tasks
try:
    other.get_task(ok)
    raise AssertionError("another user read the task")
except requests.exceptions.HTTPError as e:
    assert e.response.status_code == 404, e

print(json.dumps({"ok": ok, "bad": bad, "canceled": sleeper}))
