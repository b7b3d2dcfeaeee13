"""Step test to find the knee: add GOURMETGRAM_STEP_USERS users every GOURMETGRAM_STAGE_SECONDS
up to GOURMETGRAM_MAX_USERS. Run with --csv-full-history; `gourmetgram loadtest` reports the knee
(the last step whose throughput still grew by 10% or more).
"""

import os

from locust import LoadTestShape


class StepShape(LoadTestShape):
    step_users = int(os.environ.get("GOURMETGRAM_STEP_USERS", "2"))
    stage_seconds = float(os.environ.get("GOURMETGRAM_STAGE_SECONDS", "20"))
    max_users = int(os.environ.get("GOURMETGRAM_MAX_USERS", "16"))

    def tick(self):
        users = self.step_users * (int(self.get_run_time() // self.stage_seconds) + 1)
        if users > self.max_users:
            return None
        return users, users
