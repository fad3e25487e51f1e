// Drives the npm `consul` client (unmodified) against a dnsreg server:
// register with a TTL check, pass it, list, watch a change, deregister.
// Usage: node client.js PORT   (prints one JSON object with what it saw)
"use strict";
const Consul = require("consul");

const consul = new Consul({ host: "127.0.0.1", port: Number(process.argv[2]) });
const ids = (nodes) => nodes.map((n) => n.Service.ID).sort();

async function watchOnce(register) {
  // consul.watch runs blocking queries (?index=&wait=) and emits "change" per new index.
  const watch = consul.watch({
    method: consul.health.service,
    options: { service: "web", wait: "10s" },
  });
  const seen = [];
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("watch saw no change in 10s")), 10000);
      watch.on("error", reject);
      watch.on("change", (data) => {
        seen.push(ids(data));
        if (seen.length === 1) register().catch(reject);
        else {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  } finally {
    watch.end();
  }
  return seen;
}

(async () => {
  const out = {};
  await consul.agent.service.register({
    name: "web",
    id: "web-node",
    address: "127.0.0.1",
    port: 8080,
    tags: ["primary"],
    meta: { Runtime: "node" },
    check: { ttl: "30s", deregistercriticalserviceafter: "1m" },
  });
  await consul.agent.check.pass({ id: "service:web-node", note: "from node" });
  out.services = await consul.catalog.service.list();
  out.passing = ids(await consul.health.service({ service: "web", passing: true }));
  out.agent = await consul.agent.service.list();
  out.watch = await watchOnce(() =>
    consul.agent.service.register({ name: "web", id: "web-node-2", address: "127.0.0.2", port: 8081 }),
  );
  await consul.agent.service.deregister("web-node");
  out.after = (await consul.catalog.service.nodes("web")).map((n) => n.ServiceID);
  out.leader = await consul.status.leader();
  // KV is not offered: a 404, which this client reports as an absent key.
  out.kv = (await consul.kv.get("config/web")) ?? null;
  console.log(JSON.stringify(out));
})().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
