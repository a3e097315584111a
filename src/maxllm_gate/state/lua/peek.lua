-- Read the pair as it stands, writing nothing: for reports (capacity, metrics) that
-- must show what every process did, not this process's last view.

return reply(1, 0)
