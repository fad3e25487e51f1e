import consul  # pip install py-consul

c = consul.Consul(host="127.0.0.1", port=8500)
c.agent.service.register(
    "web", service_id="web-1", address="10.0.0.5", port=8080, tags=["primary"],
    extra_checks=[{"TTL": "30s", "CheckID": "web-1-alive"}],
)
c.agent.check.ttl_pass("web-1-alive")  # again within every 30 s, or it turns critical
index, nodes = c.health.service("web", passing=True)
for node in nodes:
    s = node["Service"]
    print(s["ID"], f"{s['Address']}:{s['Port']}", s["Tags"])
c.agent.service.deregister("web-1")
# A blocking query: returns at the next change after `index` (here at once: the
# deregistration is newer), or when the wait runs out.
index, nodes = c.health.service("web", index=index, wait="5m")
print("gone" if not nodes else nodes)
