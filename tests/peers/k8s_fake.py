"""A Kubernetes API stand-in (kmock) on 127.0.0.1: pods with get/list/watch and
create/delete, so a test can create and delete pods while the agent watches.
  python k8s_fake.py PORT
"""
import asyncio
import signal
import sys

import kmock


async def main(port):
    async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s, host="127.0.0.1", port=port):
        verbs = {"get", "list", "watch", "create", "delete", "patch", "update"}
        k8s.resources["v1/pods"] = kmock.ResourceInfo(namespaced=True, kind="Pod", singular="pod", verbs=verbs)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


asyncio.run(main(int(sys.argv[1])))
