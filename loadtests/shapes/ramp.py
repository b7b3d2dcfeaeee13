"""Ramp up and down like the course's load generator: users [1, 2, 3, 5, 3, 2, 1].

    locust -f loadtests/locustfile.py,loadtests/shapes/ramp.py --headless --host URL
Stage length: GOURMETGRAM_STAGE_SECONDS (default 30).
"""

import os

from locust import LoadTestShape


class RampShape(LoadTestShape):
    users = [1, 2, 3, 5, 3, 2, 1]
    stage_seconds = float(os.environ.get("GOURMETGRAM_STAGE_SECONDS", "30"))

    def tick(self):
        stage = int(self.get_run_time() // self.stage_seconds)
        if stage >= len(self.users):
            return None
        return self.users[stage], self.users[stage]
