# mentorfy/workers/extraction_worker.py (example)
#
# The specification's extraction worker, adopted to retryd. The diff against
# the original is in clients/python/README.md ("Adopting retryd in an RQ
# worker"): the task is decorated, the retry decision and the enqueue_in()
# are gone (retryd decides, the RQ bridge re-enqueues), the except block
# re-raises to the decorator, and the give-up bookkeeping moved to a hook.

import retryd
from datetime import datetime, timezone

from mentorfy.core.db import supabase
from mentorfy.core.logging import logger
from mentorfy.core.queues import enqueue_chunking
from mentorfy.core.storage import extract_text, store_extracted_text


def mark_job_failed(error, decision, payload):
    """retryd gave up on the job: mirror it in the application's table."""
    supabase.table("pipeline_job").update({
        "status": "failed",
        "completed_at": datetime.now(timezone.utc).isoformat(),
    }).eq("id", payload["pipeline_job_id"]).execute()
    logger.error(
        f"❌ Giving up on {payload['document_id']}: {decision.reason} "
        f"(error: {type(error).__name__})"
    )


@retryd.task(
    phase="extraction",
    job_id_arg="pipeline_job_id",
    labels=("document_id",),
    next_phase="chunking",
    on_give_up=mark_job_failed,
)
async def extract_text_task(
    pipeline_job_id: str,
    document_id: str,
    source_location: str,
    retry_count: int = 0,
    **kwargs
):
    """
    Phase 1: Extract text from source
    Retries are scheduled by retryd (see @retryd.task)
    """
    phase_id = None

    try:
        # 1. Create phase record
        phase = supabase.table("pipeline_phase").insert({
            "pipeline_job_id": pipeline_job_id,
            "phase": "extraction",
            "status": "processing",
            "retry_count": retry_count,
            "input_location": source_location,
            "started_at": datetime.now(timezone.utc).isoformat(),
        }).execute()
        phase_id = phase.data[0]["id"]

        # 2. Do work
        text = await extract_text(source_location)
        text_location = await store_extracted_text(document_id, text)

        # 3. Success - update phase
        supabase.table("pipeline_phase").update({
            "status": "completed",
            "completed_at": datetime.now(timezone.utc).isoformat(),
            "output_location": text_location,
            "metadata": {"text_length": len(text)}
        }).eq("id", phase_id).execute()

        # 4. Update job
        supabase.table("pipeline_job").update({
            "current_phase": "chunking",
            "updated_at": datetime.now(timezone.utc).isoformat(),
        }).eq("id", pipeline_job_id).execute()

        # 5. Enqueue next phase
        enqueue_chunking(pipeline_job_id, document_id, text_location, **kwargs)

        logger.info(f"✅ Extraction completed for {document_id}")

    except Exception as e:
        logger.error(f"❌ Extraction failed for {document_id}: {e}")

        # Mark phase as failed
        if phase_id:
            supabase.table("pipeline_phase").update({
                "status": "failed",
                "error_message": str(e),
                "error_type": type(e).__name__,
                "completed_at": datetime.now(timezone.utc).isoformat(),
            }).eq("id", phase_id).execute()

        # Retry or give up? retryd decides when @retryd.task reports this.
        raise
