-- hot.lua: every request on one key.
wrk.headers["X-Key"] = "hot"
