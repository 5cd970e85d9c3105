-- keys.lua: every request carries one of 100k distinct X-Key values.
-- Each wrk thread starts at its own offset, so threads do not march in step.
local n = 0
local keys = 100000

setup = function(thread)
  thread:set("offset", math.random(0, keys - 1))
end

request = function()
  n = n + 1
  return wrk.format("GET", "/", { ["X-Key"] = "k" .. ((n + offset) % keys) })
end
