from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.billing.rules import PriceSchedule, Unit
from app.core.orm import Base, UTCDateTime, utcnow


class Price(Base):
    """One model's price schedule from ``effective_from`` until the next row for that model."""

    __tablename__ = "prices"
    __table_args__ = (
        UniqueConstraint("model", "effective_from"),
        CheckConstraint("output_unit IN ('tile', 'megapixel')", name="output_unit"),
        CheckConstraint("input_unit IN ('tile', 'megapixel')", name="input_unit"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(64))
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime)
    output_unit: Mapped[str] = mapped_column(String(16))
    input_unit: Mapped[str] = mapped_column(String(16))
    per_step: Mapped[bool] = mapped_column(Boolean)
    output_first_unit_nanos: Mapped[int] = mapped_column(BigInteger)
    output_unit_nanos: Mapped[int] = mapped_column(BigInteger)
    input_unit_nanos: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def schedule(self) -> PriceSchedule:
        output_unit: Unit = "tile" if self.output_unit == "tile" else "megapixel"
        input_unit: Unit = "tile" if self.input_unit == "tile" else "megapixel"
        return PriceSchedule(
            model=self.model,
            output_unit=output_unit,
            input_unit=input_unit,
            per_step=self.per_step,
            output_first_unit_nanos=self.output_first_unit_nanos,
            output_unit_nanos=self.output_unit_nanos,
            input_unit_nanos=self.input_unit_nanos,
        )


class Charge(Base):
    """The ledger: one row per charged job, never more (``job_id`` is unique)."""

    __tablename__ = "charges"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    model: Mapped[str] = mapped_column(String(64))
    price_id: Mapped[int] = mapped_column(ForeignKey("prices.id"))
    amount_nanos: Mapped[int] = mapped_column(BigInteger)
    # Indexed: usage reports read the ledger by time for whatever the rollup does not cover.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class BudgetPeriod(Base):
    """What a key has held (jobs accepted, not yet finished) and been charged in one budget
    period. Submissions reserve against it atomically, so concurrent ones cannot overshoot."""

    __tablename__ = "budget_periods"

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    # The first instant of the month (UTC), or the epoch for a "total" budget.
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    held_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    charged_nanos: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageHour(Base):
    """The ledger summed per closed UTC hour, key and model (app/billing/rollup.py writes each
    hour once, in the transaction that moves the watermark past it). Reports read it below the
    watermark and the ledger itself above, so they equal the ledger either way."""

    __tablename__ = "usage_hours"
    __table_args__ = (Index("ix_usage_hours_api_key_id_hour_start", "api_key_id", "hour_start"),)

    hour_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger)
    output_tiles: Mapped[int] = mapped_column(BigInteger)
    input_tiles: Mapped[int] = mapped_column(BigInteger)
    charged_nanos: Mapped[int] = mapped_column(BigInteger)
    # Reconciliation with the upstream (app/billing/reconciliation.py): the charged jobs whose
    # upstream reported neurons, the cost those neurons imply, and what those jobs were charged.
    neuron_jobs: Mapped[int] = mapped_column(BigInteger)
    implied_nanos: Mapped[int] = mapped_column(BigInteger)
    neuron_charged_nanos: Mapped[int] = mapped_column(BigInteger)
    # The same sums over the hour's first 15, 30 and 45 minutes: a report in a zone whose
    # midnight falls at :15, :30 or :45 of a UTC hour (every zone in use since 1972: Asia/Kolkata,
    # Asia/Kathmandu, America/St_Johns, Australia/Adelaide...) splits such an hour exactly from
    # the rollup; the rest of the hour is the total minus this.
    jobs_before_15: Mapped[int] = mapped_column(BigInteger)
    output_tiles_before_15: Mapped[int] = mapped_column(BigInteger)
    input_tiles_before_15: Mapped[int] = mapped_column(BigInteger)
    charged_nanos_before_15: Mapped[int] = mapped_column(BigInteger)
    jobs_before_30: Mapped[int] = mapped_column(BigInteger)
    output_tiles_before_30: Mapped[int] = mapped_column(BigInteger)
    input_tiles_before_30: Mapped[int] = mapped_column(BigInteger)
    charged_nanos_before_30: Mapped[int] = mapped_column(BigInteger)
    jobs_before_45: Mapped[int] = mapped_column(BigInteger)
    output_tiles_before_45: Mapped[int] = mapped_column(BigInteger)
    input_tiles_before_45: Mapped[int] = mapped_column(BigInteger)
    charged_nanos_before_45: Mapped[int] = mapped_column(BigInteger)


class UsageRollupState(Base):
    """One row: every UTC hour before ``rolled_until`` is in ``usage_hours`` (null: none yet)."""

    __tablename__ = "usage_rollup_state"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    rolled_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Every UTC hour before this is in ``ledger_hours`` (null: none yet).
    ledger_checked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LedgerHour(Base):
    """The ledger itself (``charges`` alone, nothing joined) summed per UTC hour, an hour after
    the hour closed (app/billing/rollup.py:check_ledger). The reports' reconciliation line
    checks them against it: a few rows a day to read instead of every charge, and summed apart
    from the rollup, later, so a charge the rollup missed shows up as a difference."""

    __tablename__ = "ledger_hours"

    hour_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger)
    charged_nanos: Mapped[int] = mapped_column(BigInteger)
