"""Soak: a steady GOURMETGRAM_SOAK_USERS users for GOURMETGRAM_SOAK_SECONDS (default 4 users, 30 min)."""

import os

from locust import LoadTestShape


class SoakShape(LoadTestShape):
    users = int(os.environ.get("GOURMETGRAM_SOAK_USERS", "4"))
    seconds = float(os.environ.get("GOURMETGRAM_SOAK_SECONDS", "1800"))

    def tick(self):
        if self.get_run_time() >= self.seconds:
            return None
        return self.users, self.users
