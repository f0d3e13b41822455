"""Job-change notifications from whoever changes a job (workers, the API) to the API processes
holding waiting requests and event streams, so those wait on a push instead of each polling the
database.

A carrier moves the messages (:mod:`.carriers`: Redis pub/sub, or a Unix datagram socket per
API process on one machine); the hub (:mod:`.hub`) fans them out to the waiting requests of
its process. Notifications are hints: a lost one costs a client a little latency (the hub
re-checks watched jobs now and then), never a result.
"""

from app.core.notifications.carriers import Carrier, RedisCarrier, SocketCarrier
from app.core.notifications.hub import Change, JobWatchHub, Watcher, encode_change

__all__ = [
    "Carrier",
    "Change",
    "JobWatchHub",
    "RedisCarrier",
    "SocketCarrier",
    "Watcher",
    "encode_change",
]
