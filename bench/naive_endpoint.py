"""THE BASELINE of bench/submit_rate.py, not part of Fluxgate: the submit endpoint a developer
would write in an afternoon, to compare ``POST /v1/jobs`` with.

One FastAPI app, one uvicorn process, a sync endpoint (FastAPI runs it in its thread pool)
with SQLAlchemy sessions and the redis client: per request, 1 SELECT of the key by its SHA-256
hash, 1 INSERT of the job, a commit, and 1 LPUSH of the job's id. It validates the body with
pydantic and answers 202 with a small JSON object. Nothing else: no rate limit, no budget, no
price, no queue position, no idempotency, no outbox, no metrics, no request id, no size limits.
Its tables (``naive_keys``, ``naive_jobs``) live in a scratch database of its own, which the
bench creates and drops; the LPUSH goes to the list ``naive-baseline:jobs``.

The one setting that is not a default: the engine's pool is the gateway's (15 + 5 overflow),
so that with 16 client connections the baseline does not spend its time opening connections.

    python -m bench.naive_endpoint --database-url postgresql+psycopg://... \\
        --redis-url redis://127.0.0.1:6379/3 --port 8100 [--create-key fgk_...]
"""

from __future__ import annotations

import argparse
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import redis
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

QUEUE = "naive-baseline:jobs"


class Base(DeclarativeBase):
    pass


class NaiveKey(Base):
    __tablename__ = "naive_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)


class NaiveJob(Base):
    __tablename__ = "naive_jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("naive_keys.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str]
    width: Mapped[int]
    height: Mapped[int]
    created_at: Mapped[datetime]


class JobIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=4096)
    model: str = "flux-2-klein-4b"
    width: int = Field(default=1024, ge=256, le=1920, multiple_of=16)
    height: int = Field(default=768, ge=256, le=1920, multiple_of=16)
    seed: int | None = Field(default=None, ge=0, le=4294967295)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_app(database_url: str, redis_url: str) -> FastAPI:
    engine = create_engine(database_url, pool_size=15, max_overflow=5)
    make_session = sessionmaker(engine)
    queue = redis.Redis.from_url(redis_url)
    app = FastAPI(title="naive submit endpoint (benchmark baseline)")

    @app.post("/v1/jobs", status_code=202)
    def submit(body: JobIn, authorization: Annotated[str, Header()] = "") -> dict[str, Any]:
        token = authorization.removeprefix("Bearer ")
        with make_session() as session:
            key = session.scalars(
                select(NaiveKey).where(NaiveKey.key_hash == hash_key(token))
            ).first()
            if key is None:
                raise HTTPException(status_code=401, detail="invalid API key")
            job = NaiveJob(
                id="job_" + uuid.uuid4().hex,
                api_key_id=key.id,
                status="queued",
                model=body.model,
                prompt=body.prompt,
                width=body.width,
                height=body.height,
                created_at=datetime.now(UTC),
            )
            session.add(job)
            session.commit()
            queue.lpush(QUEUE, job.id)
            return {"id": job.id, "object": "job", "status": job.status, "model": job.model}

    return app


def create_schema(database_url: str, key: str) -> None:
    """The tables, and one key (``key``) to submit with."""
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(NaiveKey(id="key_baseline", name="baseline", key_hash=hash_key(key)))
        session.commit()
    engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_endpoint", description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--create-key", metavar="KEY", help="create the tables and this key first")
    args = parser.parse_args(argv)
    if args.create_key:
        create_schema(args.database_url, args.create_key)
    uvicorn.run(
        create_app(args.database_url, args.redis_url),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
