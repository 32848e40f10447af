"""The deep tests: long stories on real processes that ``make test`` leaves to ``make test-deep``.

Each tells, on the real broker with real workers (or on several real processes), a story that
cheaper tests of the gate tell too: the shell's part in the in-memory world (``tests/world``),
the decisions in the book's tests, the run's part in the engine's. This table is the promise:
every deep test names the gate tests that tell its story, and ``tests/test_deep.py`` checks
that each named test exists and is not deep itself. What only a real broker or a real worker
process can show stays in the gate (``tests/integration`` without an entry here).
"""

from __future__ import annotations

_BOOK = "tests/runtime/test_book.py::"
_FENCING = "tests/runtime/test_book_fencing.py::"
_WORLD = "tests/world/test_shell.py::"
_POISON = "tests/world/test_poison.py::"
_WORKER_RUN = "tests/runtime/test_worker_run.py::"
_STOP = "tests/engine/test_engine_stop.py::"
_GATE_E2E = "tests/integration/test_end_to_end.py::"
_WORKER_KILLED = (
    "tests/integration/test_resilience.py::test_worker_killed_mid_job_retries_and_pool_serves_next"
)
_CRASHED = _WORLD + "test_a_crashed_instance_jobs_are_replayed_and_resumed"
_RESUMED = "tests/engine/test_engine_resume.py::test_resumed_run_equals_uninterrupted"

# deep test -> the gate tests that tell its story
DEEP: dict[str, tuple[str, ...]] = {
    # the job's lifecycle on a real service and its workers
    "tests/integration/test_lifecycle.py::test_cancel_during_data_preparation_ends_within_five_seconds": (
        _STOP + "test_stop_during_data_preparation",
        _BOOK + "test_cancel_of_a_running_job_stops_it_then_kills_it_after_the_grace",
    ),
    "tests/integration/test_lifecycle.py::test_revoke_during_data_preparation_hands_the_job_back": (
        _STOP + "test_stop_during_data_preparation",
        _BOOK + "test_revoke_hands_back_without_events_and_never_commits_past_the_job",
        _WORLD + "test_a_joining_instance_takes_its_share_and_the_jobs_resume",
    ),
    "tests/integration/test_lifecycle.py::test_revoke_during_evaluation_checkpoints_and_resumes": (
        _STOP + "test_stop_during_evaluation_checkpoints_the_step",
        _WORLD + "test_a_joining_instance_takes_its_share_and_the_jobs_resume",
    ),
    "tests/integration/test_lifecycle.py::test_conflicting_resubmit_and_a_second_key_while_running": (
        _BOOK + "test_duplicate_is_settled_and_conflict_rejected_with_the_next_seq",
        _BOOK + "test_submit_on_a_wrong_key_is_dead_lettered_without_an_event",
    ),
    "tests/integration/test_lifecycle.py::test_a_worker_death_after_a_resume_is_still_retried": (
        _BOOK + "test_resumes_do_not_spend_the_failure_budget",
        _WORKER_KILLED,
    ),
    "tests/integration/test_lifecycle.py::test_a_hanging_run_is_retried_then_fails_as_stalled": (
        _BOOK + "test_silent_run_is_killed_retried_then_stalled",
        _BOOK + "test_per_job_stall_timeout_wins",
    ),
    "tests/integration/test_resilience.py::test_worker_deaths_past_the_policy_end_with_run_worker_died": (
        _BOOK + "test_worker_death_is_retried_then_fails_with_run_worker_died",
        _WORKER_KILLED,
    ),
    "tests/integration/test_resilience.py::test_running_job_cancelled_within_five_seconds": (
        _BOOK + "test_cancel_of_a_running_job_stops_it_then_kills_it_after_the_grace",
        _STOP + "test_stop_within_one_step_keeps_a_checkpoint",
    ),
    "tests/integration/test_resilience.py::test_duplicates_conflicts_and_timeouts": (
        _BOOK + "test_duplicate_is_settled_and_conflict_rejected_with_the_next_seq",
        _BOOK + "test_run_past_its_deadline_and_grace_is_killed_with_timeout",
        _STOP + "test_deadline_stops_the_run",
    ),
    "tests/integration/test_resilience.py::test_flood_of_malformed_commands": (
        _GATE_E2E + "test_malformed_commands_get_typed_errors_and_service_goes_on",
        _BOOK + "test_undecodable_command_gets_a_dead_letter_and_a_numbered_rejection",
    ),
    "tests/integration/test_resilience.py::test_busy_pool_pauses_partitions_and_resumes": (
        _WORLD + "test_a_full_queue_pauses_consumption",
    ),
    # instances that stop, crash or lose the broker
    "tests/integration/test_restarts.py::test_service_killed_mid_job_resumes_from_checkpoint": (
        _CRASHED,
        _RESUMED,
    ),
    "tests/integration/test_restarts.py::test_two_instances_one_killed_all_jobs_end_once": (
        _CRASHED,
    ),
    "tests/integration/test_restarts.py::test_broker_away_30s_loses_no_event_and_logs_little": (
        _WORLD + "test_the_broker_away_then_back_loses_nothing",
    ),
    "tests/integration/test_restarts.py::test_sigterm_checkpoints_and_the_next_instance_resumes": (
        _WORLD + "test_a_drained_instance_hands_its_job_to_the_next",
    ),
    "tests/integration/test_kafka_faults.py::test_sigterm_with_the_broker_away_exits_in_time_and_the_job_resumes": (
        _WORLD + "test_a_drained_instance_hands_its_job_to_the_next",
        _WORLD + "test_the_broker_away_then_back_loses_nothing",
    ),
    "tests/integration/test_kafka_faults.py::test_crash_between_the_terminal_event_and_its_commit_does_not_retrain": (
        _CRASHED,
        "tests/engine/test_engine_fence.py::test_resume_from_the_highest_earlier_attempt_with_a_checkpoint",
    ),
    "tests/integration/test_kafka_faults.py::test_ten_thousand_ended_jobs_are_tombstoned_after_retention": (
        _BOOK + "test_ended_jobs_states_are_tombstoned_after_the_retention",
        _FENCING + "test_a_state_committed_before_the_assignment_is_tombstoned_after_the_retention",
    ),
    "tests/integration/test_kafka_faults.py::test_the_start_sweep_removes_what_crashes_left_on_disk": (
        "tests/runtime/test_sweeper.py::test_a_sweep_deletes_what_is_stale_or_ended_and_nothing_else",
        "tests/runtime/test_sweep.py::test_only_ended_jobs_lose_their_checkpoints_however_fresh",
    ),
    # fencing and poison pills: one paused owner stays in the gate
    "tests/integration/test_fencing.py::test_a_paused_owner_is_fenced_and_the_job_ends_once[group]": (
        "tests/integration/test_fencing.py::test_a_paused_owner_is_fenced_and_the_job_ends_once",
        _WORLD + "test_a_zombie_instance_is_fenced_and_commits_nothing_more",
    ),
    "tests/integration/test_fencing.py::test_a_command_on_another_partition_is_forwarded_never_run_twice": (
        _FENCING + "test_a_misplaced_submit_and_cancel_are_forwarded_to_the_jobs_partition",
        _FENCING + "test_a_completed_job_forwarded_twice_still_ends_once",
        "tests/runtime/test_book_world.py::test_two_books_over_one_world",
    ),
    "tests/integration/test_fencing.py::test_no_command_stops_the_service_not_even_one_it_died_on": (
        _FENCING + "test_admission_raising_anything_is_a_typed_refusal_and_the_next_job_runs",
        "tests/runtime/test_admission.py::test_what_the_os_says_of_a_path_is_a_typed_refusal",
        _BOOK + "test_a_crash_markers_refusal_of_a_resumed_jobs_submit_ends_the_job",
        "tests/runtime/test_marker.py::test_a_marker_is_on_disk_only_while_its_command_is_handled",
        _GATE_E2E + "test_malformed_commands_get_typed_errors_and_service_goes_on",
        _POISON + "test_an_admission_that_hangs_is_refused_and_the_next_job_runs",
        _POISON + "test_a_command_the_instance_died_on_is_refused_once_then_the_next_runs",
        _POISON + "test_an_admission_that_raises_anything_is_refused_typed_and_the_next_job_runs",
    ),
    # what the users see
    "tests/integration/test_end_to_end.py::test_service_process_does_not_map_torch": (
        "tests/runtime/test_admission.py::test_the_service_side_imports_no_torch",
    ),
    "tests/integration/test_client_end_to_end.py::test_status_jobs_and_watch_show_a_queued_a_running_and_an_ended_job": (
        "tests/integration/test_client_end_to_end.py::test_client_follows_a_real_job_then_reads_its_status_and_the_job_list",
        "tests/client/test_client_kafka.py::test_status_jobs_and_follow_of_ended_jobs_through_the_cli",
        "tests/client/test_client_board.py::test_watch_shows_active_jobs_and_those_that_ended_while_watched",
    ),
    "tests/integration/test_client_outage.py::test_a_broker_outage_is_two_lines_under_watch_dashboard_and_follow": (
        "tests/client/test_client_views.py::test_a_broker_outage_is_two_lines_however_loud_the_library",
        "tests/client/test_client_views.py::test_the_dashboard_marks_its_page_stale_while_kafka_is_away",
    ),
    # an MLflow server of its own (its start alone is a minute of a loaded machine's CPU)
    "tests/client/test_client_mlflow.py::test_export_mirrors_jobs_into_mlflow_runs_once": (
        "tests/client/test_client_mlflow_fold.py::test_a_run_is_rebuilt_only_when_it_holds_what_the_job_no_longer_has",
        "tests/client/test_client_sweep_plan.py::test_export_mlflow_puts_a_sweeps_trials_in_one_experiment_tagged_with_their_values",
    ),
    "tests/client/test_client_mlflow.py::test_follow_mirrors_a_job_live_and_rebuilds_its_run_on_resume": (
        "tests/client/test_client_mlflow_fold.py::test_a_resumed_attempt_replaces_the_steps_after_its_checkpoint",
        "tests/client/test_client_mlflow_fold.py::test_a_cancelled_job_is_killed_and_a_rejection_changes_nothing",
    ),
    # resources, storage, fine-tuning, sweeps and ranks
    "tests/integration/test_disk_full.py::test_a_full_disk_hands_the_job_back_until_space_returns": (
        "tests/runtime/test_book_disk_full.py::test_a_full_disk_hands_the_job_back_to_wait_then_resume",
        "tests/engine/test_engine_disk_full.py::test_enospc_mid_checkpoint_keeps_the_last_good_one_and_resumes_from_it",
        _WORKER_RUN + "test_a_full_disk_outside_the_stages_is_disk_full",
    ),
    "tests/integration/test_memory.py::test_an_oversized_job_is_refused_at_acceptance": (
        "tests/engine/test_engine_memory.py::test_the_oversized_spec_is_refused_at_acceptance_within_a_second",
    ),
    "tests/integration/test_memory.py::test_a_job_past_its_workers_limit_fails_typed_and_harms_no_other": (
        "tests/engine/test_engine_memory.py::test_past_the_workers_limit_a_job_fails_with_training_oom_and_the_next_one_runs",
        _WORKER_RUN + "test_host_memory_running_out_is_training_oom",
        _WORKER_RUN + "test_a_typed_oom_carries_the_worker_budget_when_it_has_one",
    ),
    "tests/integration/test_governance.py::test_users_take_turns_progress_is_bounded_and_artifacts_are_private": (
        _BOOK + "test_users_take_turns_so_a_flood_does_not_starve_another_user",
        _BOOK + "test_progress_is_coalesced_but_evaluations_and_the_end_are_not",
        "tests/runtime/test_admission.py::test_another_users_artifact_is_forbidden_unless_shared",
    ),
    "tests/integration/test_secure_kafka.py::test_job_end_to_end_over_sasl_ssl": (
        "tests/integration/test_tenancy_kafka.py::test_tenants_are_held_apart_by_the_brokers_acls_and_the_service",
        "tests/client/test_client_security.py::test_scram_over_tls_from_the_variables",
    ),
    "tests/integration/test_storage.py::test_s3_job_killed_on_a_resumes_on_b_from_the_bucket": (
        "tests/storage/test_storage_engine.py::test_resume_on_another_disk_from_the_bucket",
        _CRASHED,
    ),
    "tests/integration/test_finetune_broker.py::test_lora_jobs_through_the_broker": (
        "tests/engine/test_engine_adapters.py",
        "tests/engine/test_engine_finetune.py::test_init_from_continues_from_the_earlier_weights",
    ),
    "tests/integration/test_distributed_broker.py::test_two_process_jobs_refused_killed_and_cancelled": (
        "tests/engine/test_engine_distributed.py::test_a_cancelled_two_process_run_resumes_on_one_process_then_on_two",
        "tests/engine/test_engine_distributed.py::test_a_rank_killed_mid_run_ends_the_run_as_a_dead_worker",
        "tests/runtime/test_distributed_admission.py::test_a_two_process_job_takes_two_slots_and_waits_its_turn",
    ),
    "tests/test_trainjob_ranks.py::test_two_nodes_run_the_trainjob_command_as_one_job": (
        "tests/engine/test_engine_distributed.py::test_two_processes_train_as_one_on_the_same_global_batch",
        "tests/test_trainjob.py::test_a_rank_takes_its_place_from_torchrun",
    ),
    "tests/integration/test_sweep.py::test_a_sweep_prunes_survives_a_kill_and_ends_with_its_best_trial": (
        "tests/client/test_client_sweep_plan.py::test_a_restarted_sweep_reruns_nothing_and_goes_on_where_it_was",
        "tests/client/test_client_sweep_plan.py::test_a_trial_worse_than_the_median_is_cancelled_naming_the_sweep_and_ends_pruned",
    ),
}


def is_deep(nodeid: str) -> bool:
    """Whether a collected test (``path::name`` or ``path::name[param]``) is deep."""
    return nodeid in DEEP or nodeid.split("[", 1)[0] in DEEP
