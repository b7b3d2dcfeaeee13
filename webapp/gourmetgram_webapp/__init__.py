"""The GourmetGram web app (user page + read-only operator page); see :mod:`.app`."""
