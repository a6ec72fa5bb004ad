"""SD.Next's task state (modules/shared_state.py), reduced to what the extension and the API use, same logic.

Additions for the tests only: every `sampling_step` and `textinfo` assignment is logged in `progress_log`, and
every begin/end call in `calls`."""

import re
import time
import uuid


class State:
    def __init__(self):
        self.state_history = []
        self.job_history = 0
        self.total_jobs = 0
        self.id = 0
        self.results = []
        self.skipped = False
        self.interrupted = False
        self.paused = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.frame_count = 0
        self.batch_no = 0
        self.batch_count = 0
        self._sampling_step = 0
        self.sampling_steps = 0
        self._textinfo = None
        self.time_start = None
        self.duration = None
        self.api = False
        self.calls = []
        self.progress_log = []

    @property
    def sampling_step(self):
        return self._sampling_step

    @sampling_step.setter
    def sampling_step(self, value):
        self._sampling_step = value
        self.progress_log.append(("step", value, self.sampling_steps))

    @property
    def textinfo(self):
        return self._textinfo

    @textinfo.setter
    def textinfo(self, value):
        self._textinfo = value
        self.progress_log.append(("text", value))

    def skip(self):
        self.skipped = True

    def interrupt(self):
        self.interrupted = True

    def dict(self):
        return {
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "job": self.job,
            "job_count": self.job_count,
            "job_timestamp": None,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }

    def find(self, task_id):
        for job in reversed(self.state_history):
            if job["id"] == task_id:
                return job
        return None

    def history(self, op, task_id=None, results=None):
        if results is None:
            results = []
        job = {
            "id": task_id or self.id,
            "job": self.job.lower(),
            "op": op.lower(),
            "timestamp": self.time_start,
            "duration": self.duration,
            "outputs": results,
        }
        self.state_history.append(job)

    def outputs(self, results):
        if isinstance(results, list):
            self.results += results
        else:
            self.results.append(results)
        if len(self.results) > 0:
            self.history("output", self.id, results=self.results)

    def get_id(self, task_id=None):
        if task_id is None or task_id == 0:
            task_id = uuid.uuid4().hex[:15]
        if not isinstance(task_id, str):
            task_id = str(task_id)
        match = re.search(r"\((.*?)\)", task_id)
        return match.group(1) if match else task_id

    def clear(self):
        self.id = ""
        self.job = ""
        self.job_count = 0
        self.job_no = 0
        self.frame_count = 0
        self.duration = None
        self.paused = False
        self.results = []

    def begin(self, title="", task_id=0, api=None):
        self.calls.append(("begin", title, task_id))
        self.clear()
        self.interrupted = self.interrupted if title.startswith("Save") else False
        self.skipped = False
        self.job_history += 1
        self.total_jobs += 1
        self.id = self.get_id(task_id)
        self.job = title
        self.job_count = 1
        self.batch_no = 0
        self.batch_count = 0
        self._sampling_step = 0
        self.sampling_steps = 0
        self._textinfo = None
        self.api = api if api is not None else False
        self.time_start = time.time()
        self.history("begin", self.id)
        return self.id

    def end(self, task_id=None, api=None):
        self.calls.append(("end", task_id))
        if task_id is not None:
            prev_job = self.find(task_id)
            if prev_job is not None:
                self.id = prev_job["id"]
                self.job = prev_job["job"]
                self.duration = (
                    round(time.time() - prev_job["timestamp"], 3) if prev_job["timestamp"] is not None else None
                )
        self.time_start = time.time()
        if api is not None:
            self.api = api
        self.history("end", task_id or self.id)
        self.clear()
