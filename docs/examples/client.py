import asyncio

from dnsreg.client import Client


async def main() -> None:
    async with Client("http://127.0.0.1:8500", dns="127.0.0.1:8600") as c:
        await c.register("web", "web-1", port=8080, address="10.0.0.5", tags=["primary"],
                         meta={"version": "2"}, ttl="30s",
                         checks=[{"http": "http://10.0.0.5:8080/health", "interval": "5s"}])
        await c.heartbeat("web", "web-1")
        services = await c.services(prefix="we")   # {"web": {"instances": 1, "served": 0, ...}}
        print(services["web"]["instances"])
        web = await c.instances("web", tag="primary")   # list of instance dicts
        print(web.revision)                              # the revision the read saw
        # A blocking read: returns at the next change, or after 5 s (well within the lease).
        later = await c.instances("web", index=web.revision, wait="5s")
        print(len(later))
        await c.deregister("web", "web-1")


asyncio.run(main())
