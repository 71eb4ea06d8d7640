# Peer nodes and the fake API log through this VM; keep test output readable.
ExUnit.start(capture_log: true)
