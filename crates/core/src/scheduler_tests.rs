use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn config(num_blocks: usize, block_size: usize, budget: usize, max_seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: max_seqs,
        max_num_batched_tokens: budget,
        max_model_len: (num_blocks * block_size).min(1024),
        block_size,
        num_blocks,
        policy: SchedulingPolicy::Fcfs,
        // These tests count blocks and tokens of identical prompts: the cache is tested apart.
        enable_prefix_caching: false,
    }
}

fn request(id: &str, prompt_len: usize, max_tokens: u32) -> EngineRequest {
    EngineRequest::builder(id, vec![1; prompt_len])
        .max_tokens(max_tokens)
        .build()
        .expect("valid request")
}

fn add(s: &mut Scheduler, id: u64, prompt_len: usize, max_tokens: u32) {
    let outcome = s.add(
        SeqId(id),
        request(&id.to_string(), prompt_len, max_tokens),
        0.0,
    );
    assert!(matches!(outcome, AddOutcome::Queued), "request {id} queued");
}

/// Plans a step, "computes" it, and samples token 7 for every request that caught up.
/// Returns the plan and the requests that finished.
fn step(s: &mut Scheduler) -> (SchedulerOutput, Vec<Sequence>) {
    let out = s.schedule(0.0);
    s.commit(&out);
    let mut finished = Vec::new();
    for sched in &out.scheduled {
        if s.get(sched.id).expect("live").num_pending_tokens() == 0
            && let Some(done) = s.append_token(sched.id, 7, &[], 0.0)
        {
            finished.push(done);
        }
    }
    (out, finished)
}

fn preempted(out: &SchedulerOutput) -> Vec<(SeqId, PreemptReason)> {
    out.preempted.iter().map(|p| (p.id, p.reason)).collect()
}

fn tokens_of(out: &SchedulerOutput, id: u64) -> Option<usize> {
    out.scheduled
        .iter()
        .find(|s| s.id == SeqId(id))
        .map(|s| s.num_new_tokens)
}

#[test]
fn config_must_fit_one_full_length_request() {
    let mut c = config(4, 16, 64, 4);
    c.max_model_len = 65;
    assert!(Scheduler::new(c.clone()).is_err());
    c.max_model_len = 64;
    assert!(Scheduler::new(c.clone()).is_ok());
    c.max_num_seqs = 0;
    assert!(Scheduler::new(c).is_err());
}

#[test]
fn long_prompt_is_prefilled_in_chunks_then_decoded() {
    let mut s = Scheduler::new(config(64, 16, 32, 8)).expect("config");
    add(&mut s, 1, 100, 3);
    let mut chunks = Vec::new();
    let mut transitions = Vec::new();
    loop {
        let (out, finished) = step(&mut s);
        chunks.push(tokens_of(&out, 1).expect("scheduled every step"));
        transitions.push(out.scheduled[0].transition);
        if !finished.is_empty() {
            assert_eq!(
                finished[0].status(),
                RequestStatus::Finished(FinishStatus::Length)
            );
            assert_eq!(finished[0].output(), &[7, 7, 7]);
            break;
        }
    }
    assert_eq!(chunks, vec![32, 32, 32, 4, 1, 1]);
    assert_eq!(transitions[0], Some(ScheduleKind::First));
    assert!(transitions[1..].iter().all(Option::is_none));
    assert_eq!(
        s.block_manager().num_free_blocks(),
        64,
        "finish frees the blocks"
    );
}

#[test]
fn budget_and_max_num_seqs_are_never_exceeded() {
    // Odd seeds run with the prefix cache, which the identical prompts here hit all the time.
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let budget = rng.random_range(8..100);
        let max_seqs = rng.random_range(1..12);
        let mut s = Scheduler::new(SchedulerConfig {
            enable_prefix_caching: seed % 2 == 1,
            ..config(rng.random_range(16..64), 8, budget, max_seqs)
        })
        .expect("config");
        let max_prompt = s.config().max_model_len - 1;
        let mut next_id = 0;
        let mut finished = 0;
        for _ in 0..400 {
            for _ in 0..rng.random_range(0..3) {
                let prompt = rng.random_range(1..=max_prompt.min(90));
                let max_tokens = rng.random_range(1..20);
                s.add(SeqId(next_id), request("r", prompt, max_tokens), 0.0);
                next_id += 1;
            }
            let (out, done) = step(&mut s);
            finished += done.len();
            assert!(
                out.num_scheduled_tokens <= budget,
                "seed {seed}: budget exceeded"
            );
            assert_eq!(
                out.num_scheduled_tokens,
                out.scheduled
                    .iter()
                    .map(|x| x.num_new_tokens)
                    .sum::<usize>()
            );
            assert!(
                out.scheduled.len() <= max_seqs,
                "seed {seed}: max_num_seqs exceeded"
            );
            assert!(s.num_running() <= max_seqs);
            s.block_manager()
                .check_invariants()
                .expect("block invariants");
        }
        while s.has_work() {
            finished += step(&mut s).1.len();
        }
        assert_eq!(
            finished as u64, next_id,
            "seed {seed}: every request finishes"
        );
        assert_eq!(s.block_manager().num_used_blocks(), 0);
    }
}

#[test]
fn preemption_takes_the_latest_arrival_and_resumes_it_before_new_arrivals() {
    // 6 blocks of 4 slots. Three 7-token prompts take 2 blocks each; decoding then needs more.
    let mut s = Scheduler::new(config(6, 4, 64, 8)).expect("config");
    for id in 1..=3 {
        add(&mut s, id, 7, 8);
    }
    let (out, _) = step(&mut s);
    assert_eq!(out.scheduled.len(), 3);
    assert_eq!(s.block_manager().num_free_blocks(), 0);
    // Each now has 7 computed + 1 pending = 8 slots: fits in 2 blocks.
    step(&mut s);
    // The 9th token needs a third block each: the latest arrival (3) goes.
    let (out, _) = step(&mut s);
    assert_eq!(
        preempted(&out),
        vec![(SeqId(3), PreemptReason::KvCacheFull)]
    );
    assert_eq!(out.preempted[0].phase, crate::sequence::Phase::Decode);
    assert_eq!(
        s.get(SeqId(3)).expect("live").status(),
        RequestStatus::Preempted
    );
    assert_eq!(s.get(SeqId(3)).expect("live").num_computed_tokens(), 0);
    assert_eq!(tokens_of(&out, 1), Some(1));
    assert_eq!(tokens_of(&out, 2), Some(1));
    // A new arrival queues behind the preempted request.
    add(&mut s, 4, 2, 1);
    // Run until 3 and 4 have both entered the running set (2 may be preempted and resumed in
    // between): 3 comes back first, as a RESUME that recomputes its prompt and its two tokens.
    let mut order = Vec::new();
    while !(order.iter().any(|x: &(SeqId, _, _)| x.0 == SeqId(3))
        && order.iter().any(|x| x.0 == SeqId(4)))
    {
        let (out, _) = step(&mut s);
        for x in out.scheduled.iter().filter(|x| x.transition.is_some()) {
            order.push((x.id, x.transition, x.num_new_tokens));
        }
    }
    let pos = |id| {
        order
            .iter()
            .position(|x| x.0 == SeqId(id))
            .expect("scheduled")
    };
    assert!(pos(3) < pos(4), "{order:?}");
    assert_eq!(order[pos(3)], (SeqId(3), Some(ScheduleKind::Resume), 7 + 2));
    assert_eq!(order[pos(4)].1, Some(ScheduleKind::First));
    assert_eq!(s.get(SeqId(3)).expect("live").prefill_done_tokens(), 7);
}

#[test]
fn a_request_that_must_preempt_itself_waits_without_losing_tokens() {
    // Two requests; the later one cannot grow while the earlier one holds the pool.
    let mut s = Scheduler::new(config(4, 4, 64, 8)).expect("config");
    add(&mut s, 1, 8, 8);
    add(&mut s, 2, 8, 8);
    step(&mut s);
    let (out, _) = step(&mut s);
    // Request 1 needs a third block; victim is the latest arrival (2), then 1 fits.
    assert_eq!(
        preempted(&out),
        vec![(SeqId(2), PreemptReason::KvCacheFull)]
    );
    assert_eq!(tokens_of(&out, 1), Some(1));
    assert_eq!(
        tokens_of(&out, 2),
        None,
        "the victim's planned tokens were taken back"
    );
    assert!(out.num_scheduled_tokens == 1);
    let seq2 = s.get(SeqId(2)).expect("live");
    assert_eq!(seq2.num_output_tokens(), 1, "outputs survive preemption");
}

#[test]
fn priority_policy_preempts_the_lowest_priority() {
    let mut c = config(6, 4, 64, 8);
    c.policy = SchedulingPolicy::Priority;
    let mut s = Scheduler::new(c).expect("config");
    let prio = |id: &str, p: Priority| {
        EngineRequest::builder(id, vec![1; 7])
            .max_tokens(8)
            .priority(p)
            .build()
            .expect("valid")
    };
    s.add(SeqId(1), prio("a", 5), 0.0);
    s.add(SeqId(2), prio("b", 9), 0.0);
    s.add(SeqId(3), prio("c", 1), 0.0);
    step(&mut s);
    step(&mut s);
    let (out, _) = step(&mut s);
    // Request 2 has the lowest priority (largest value) though 3 arrived later.
    assert_eq!(
        preempted(&out),
        vec![(SeqId(2), PreemptReason::KvCacheFull)]
    );
}

#[test]
fn priority_policy_preempts_for_a_more_urgent_arrival() {
    let mut c = config(8, 4, 64, 2);
    c.policy = SchedulingPolicy::Priority;
    let mut s = Scheduler::new(c).expect("config");
    let prio = |id: &str, p: Priority| {
        EngineRequest::builder(id, vec![1; 4])
            .max_tokens(8)
            .priority(p)
            .build()
            .expect("valid")
    };
    s.add(SeqId(1), prio("a", 3), 0.0);
    s.add(SeqId(2), prio("b", 4), 0.0);
    step(&mut s);
    assert_eq!(s.num_running(), 2, "max_num_seqs reached");
    // An equally urgent arrival waits; a more urgent one displaces the least urgent.
    s.add(SeqId(3), prio("c", 4), 0.0);
    let (out, _) = step(&mut s);
    assert!(preempted(&out).is_empty());
    s.add(SeqId(4), prio("d", 0), 0.0);
    let (out, _) = step(&mut s);
    assert_eq!(preempted(&out), vec![(SeqId(2), PreemptReason::Priority)]);
    assert_eq!(
        out.scheduled
            .iter()
            .find(|x| x.id == SeqId(4))
            .map(|x| x.transition),
        Some(Some(ScheduleKind::First))
    );
}

#[test]
fn abort_frees_blocks_in_any_state() {
    let mut s = Scheduler::new(config(8, 4, 16, 8)).expect("config");
    add(&mut s, 1, 20, 4);
    add(&mut s, 2, 20, 4);
    step(&mut s);
    assert!(s.block_manager().num_used_blocks() > 0);
    let aborted = s.abort(SeqId(1), 1.0).expect("live");
    assert_eq!(
        aborted.status(),
        RequestStatus::Finished(FinishStatus::Aborted)
    );
    assert_eq!(aborted.timestamps().finished, Some(1.0));
    let waiting = s.abort(SeqId(2), 1.0).expect("live");
    assert_eq!(
        waiting.status(),
        RequestStatus::Finished(FinishStatus::Aborted)
    );
    assert_eq!(s.block_manager().num_used_blocks(), 0);
    assert_eq!((s.num_running(), s.num_waiting()), (0, 0));
    assert!(
        s.abort(SeqId(1), 1.0).is_none(),
        "a second abort finds nothing"
    );
    s.block_manager().check_invariants().expect("invariants");
}

#[test]
fn impossible_prompt_is_ignored() {
    let mut s = Scheduler::new(config(4, 4, 64, 8)).expect("config");
    match s.add(SeqId(1), request("big", 16, 1), 3.0) {
        AddOutcome::Ignored(seq) => {
            assert_eq!(seq.status(), RequestStatus::Finished(FinishStatus::Ignored));
            assert_eq!(seq.timestamps().finished, Some(3.0));
        }
        AddOutcome::Queued => panic!("a 16-token prompt cannot fit a 16-token context"),
    }
    assert!(!s.has_work());
    add(&mut s, 2, 15, 1);
    let (_, finished) = step(&mut s);
    assert_eq!(finished.len(), 1, "the largest prompt that fits runs");
}

#[test]
fn step_numbers_count_steps_begun() {
    let mut s = Scheduler::new(config(8, 4, 16, 8)).expect("config");
    assert_eq!(s.num_steps(), 0);
    add(&mut s, 1, 3, 2);
    assert_eq!(step(&mut s).0.step, 1);
    assert_eq!(step(&mut s).0.step, 2);
    assert_eq!(s.num_steps(), 2);
}

fn cached_config(num_blocks: usize, block_size: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        enable_prefix_caching: true,
        ..config(num_blocks, block_size, budget, 8)
    }
}

fn add_tokens(s: &mut Scheduler, id: u64, prompt: Vec<u32>, max_tokens: u32) {
    let request = EngineRequest::builder(id.to_string(), prompt)
        .max_tokens(max_tokens)
        .build()
        .expect("valid request");
    assert!(matches!(s.add(SeqId(id), request, 0.0), AddOutcome::Queued));
}

#[test]
fn a_shared_prefix_is_scheduled_without_its_cached_blocks() {
    let mut s = Scheduler::new(cached_config(16, 4, 64)).expect("valid");
    let system: Vec<u32> = (10..22).collect();
    add_tokens(&mut s, 1, system.clone(), 2);
    while s.has_work() {
        step(&mut s);
    }
    // 12 prompt tokens and 1 computed output: 3 full blocks cached, all evictable.
    assert_eq!(s.block_manager().num_cached_blocks(), 3);
    assert_eq!(s.block_manager().num_used_blocks(), 0);
    let mut prompt = system.clone();
    prompt.extend([40, 41]);
    add_tokens(&mut s, 2, prompt, 1);
    // The same prompt again: all but its last token may come from the cache, so two blocks.
    add_tokens(&mut s, 3, system, 1);
    let out = s.schedule(0.0);
    assert_eq!(tokens_of(&out, 2), Some(2), "14 tokens, 12 of them cached");
    assert_eq!(
        tokens_of(&out, 3),
        Some(4),
        "8 of 12 cached: the last block is recomputed"
    );
    assert_eq!(s.get(SeqId(2)).expect("live").num_cached_tokens(), 12);
    let shared = s.block_manager().block_table(SeqId(2)).expect("running")[..2].to_vec();
    assert_eq!(
        &s.block_manager().block_table(SeqId(3)).expect("running")[..2],
        &shared[..]
    );
    assert_eq!(s.block_manager().ref_count(shared[0]), 2);
    s.commit(&out);
    s.block_manager().check_invariants().expect("invariants");
}

#[test]
fn a_preempted_request_takes_its_cached_blocks_back_when_it_resumes() {
    // 10 blocks of 4: two requests growing to 24 tokens each cannot both fit.
    let mut s = Scheduler::new(cached_config(10, 4, 64)).expect("valid");
    add_tokens(&mut s, 1, (0..8).collect(), 16);
    add_tokens(&mut s, 2, (100..108).collect(), 16);
    let mut resumed_with = None;
    for _ in 0..200 {
        if !s.has_work() {
            break;
        }
        let out = s.schedule(0.0);
        if let Some(r) = out
            .scheduled
            .iter()
            .find(|r| r.transition == Some(ScheduleKind::Resume))
        {
            let seq = s.get(r.id).expect("live");
            resumed_with = Some((
                seq.num_computed_tokens(),
                r.num_new_tokens,
                seq.tokens().len(),
            ));
        }
        s.commit(&out);
        for sched in &out.scheduled {
            if s.get(sched.id).expect("live").num_pending_tokens() == 0 {
                s.append_token(sched.id, 7, &[], 0.0);
            }
        }
        s.block_manager().check_invariants().expect("invariants");
    }
    assert!(!s.has_work());
    let (cached, computed, total) = resumed_with.expect("a preemption and a resume");
    assert!(cached > 0, "the resumed request found its own blocks");
    assert_eq!(cached + computed, total);
}
