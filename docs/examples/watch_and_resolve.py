import asyncio

from dnsreg.client import Client


async def main() -> None:
    async with Client("http://127.0.0.1:8500", dns="127.0.0.1:8600") as c:
        # Stay registered while the block runs: heartbeats at a third of the lease,
        # registers again if the server lost it, deregisters on the way out.
        async with c.registration("web", "web-1", port=8080, address="10.0.0.5") as reg:
            print("registered", reg.id, "at revision", reg.revision)
            # Ask DNS, as any other program would: SRV records with their addresses.
            for t in await c.resolve("web"):
                print(t.host, t.port, t.priority, t.weight, t.addresses)
        # Every change after the registration: its deregistration comes first.
        async for event in c.watch(prefix="web", since=reg.revision):
            print(event.revision, event.kind, event.service, event.id)
            if event.kind == "deregistered":
                break


asyncio.run(main())
