//! Which server a part goes to: the placement policies of the job file's `placement`.
//!
//! Under the dynamic schedule a policy chooses, each time a part is handed out, among
//! the servers that have a free slot ([`Placer::choose`]). Under the static schedule it
//! deals every part at the start ([`Placer::deal`]), as the original paper did. Every
//! random choice comes from the run's seeded generator, so a seed replays a placement.

use pool_common::jobfile::Placement;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};

/// A policy with what it remembers between choices: the order it takes servers in.
pub struct Placer {
    policy: Placement,
    /// The order `shuffle` and `round-robin` go through the servers.
    order: Vec<usize>,
    /// Where in `order` the next turn starts.
    cursor: usize,
}

/// A server chosen for a part, and why, in a few words for the per-part log.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The server's index in the list.
    pub server: usize,
    /// Why this one.
    pub reason: String,
}

impl Placer {
    /// A placer for `servers` servers; `shuffle` draws its order from `rng` now.
    pub fn new(policy: Placement, servers: usize, rng: &mut StdRng) -> Placer {
        let mut order: Vec<usize> = (0..servers).collect();
        if policy == Placement::Shuffle {
            order.shuffle(rng);
        }
        Placer {
            policy,
            order,
            cursor: 0,
        }
    }

    /// Takes in a server that joined the list during the run, index `server`: its
    /// turn comes at the end of the current order.
    pub fn add_server(&mut self, server: usize) {
        self.order.push(server);
    }

    /// Chooses among `candidates` (server indices, each with a free slot). `finish`
    /// estimates when a part sent to a server now would be done there (in seconds from
    /// now, any consistent unit), for `least-loaded` and `two-choices`.
    pub fn choose(
        &mut self,
        candidates: &[usize],
        finish: impl Fn(usize) -> f64,
        rng: &mut StdRng,
    ) -> Option<Choice> {
        if candidates.is_empty() {
            return None;
        }
        let estimate = |server: usize| format!("est. done in {:.3} s", finish(server));
        Some(match self.policy {
            Placement::Random => Choice {
                server: *candidates.choose(rng).expect("not empty"),
                reason: "random".into(),
            },
            Placement::Shuffle | Placement::RoundRobin => {
                // The next server in the order that is a candidate; the turn moves past
                // it, so skipped servers keep their place.
                let len = self.order.len();
                let (offset, server) = (0..len)
                    .map(|k| (k, self.order[(self.cursor + k) % len]))
                    .find(|(_, s)| candidates.contains(s))
                    .expect("candidates are servers of the list");
                self.cursor = (self.cursor + offset + 1) % len;
                Choice {
                    server,
                    reason: format!("{} turn", self.policy.name()),
                }
            }
            Placement::LeastLoaded => {
                let server = least(candidates.iter().copied(), &finish);
                Choice {
                    server,
                    reason: format!("least loaded, {}", estimate(server)),
                }
            }
            Placement::TwoChoices => {
                let drawn: Vec<usize> = candidates.sample(rng, 2).copied().collect();
                let server = least(drawn.iter().copied(), &finish);
                let other = drawn.iter().find(|&&s| s != server);
                Choice {
                    server,
                    reason: match other {
                        Some(&other) => format!(
                            "two choices, {} vs {:.3} s",
                            estimate(server),
                            finish(other)
                        ),
                        None => format!("two choices, only one free, {}", estimate(server)),
                    },
                }
            }
        })
    }

    /// Deals `parts` parts at once over servers with the given `slots` each (the
    /// static schedule). `least-loaded` and `two-choices` weigh each server by its
    /// slots, as nothing has been measured yet.
    pub fn deal(&mut self, parts: usize, slots: &[u32], rng: &mut StdRng) -> Vec<Choice> {
        let mut dealt = vec![0u32; slots.len()];
        let all: Vec<usize> = (0..slots.len()).collect();
        (0..parts)
            .map(|_| {
                let share = |s: usize| f64::from(dealt[s] + 1) / f64::from(slots[s].max(1));
                let choice = self
                    .choose(&all, share, rng)
                    .expect("there is at least one server");
                dealt[choice.server] += 1;
                choice
            })
            .collect()
    }
}

/// The server with the smallest `key`; the first of equals.
fn least(servers: impl Iterator<Item = usize>, key: &impl Fn(usize) -> f64) -> usize {
    servers
        .min_by(|&a, &b| key(a).total_cmp(&key(b)))
        .expect("not empty")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn counts(choices: &[Choice], servers: usize) -> Vec<usize> {
        let mut counts = vec![0; servers];
        for c in choices {
            counts[c.server] += 1;
        }
        counts
    }

    #[test]
    fn static_deals_follow_each_policy() {
        let mut rng = StdRng::seed_from_u64(1);
        let deal = |policy, slots: &[u32], rng: &mut StdRng| {
            Placer::new(policy, slots.len(), rng).deal(7, slots, rng)
        };
        let shuffled = deal(Placement::Shuffle, &[1, 1, 1], &mut rng);
        let mut c = counts(&shuffled, 3);
        c.sort();
        assert_eq!(c, [2, 2, 3]);
        let again = deal(
            Placement::Shuffle,
            &[1, 1, 1],
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(shuffled, again, "a seed replays the deal");

        let rr = deal(Placement::RoundRobin, &[1, 1, 1], &mut rng);
        assert_eq!(
            rr.iter().map(|c| c.server).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2, 0]
        );
        // Weighted by slots: 4/1/2 slots take 4/1/2 of 7 parts.
        let weighted = deal(Placement::LeastLoaded, &[4, 1, 2], &mut rng);
        assert_eq!(counts(&weighted, 3), [4, 1, 2]);
        let random = deal(Placement::Random, &[1, 1, 1], &mut rng);
        assert!(random.iter().all(|c| c.server < 3));
    }

    #[test]
    fn dynamic_choices_take_only_candidates() {
        let mut rng = StdRng::seed_from_u64(7);
        let finish = |s: usize| [3.0, 1.0, 2.0, 0.5][s];
        let mut least = Placer::new(Placement::LeastLoaded, 4, &mut rng);
        assert_eq!(
            least.choose(&[0, 1, 2], finish, &mut rng).unwrap().server,
            1
        );
        assert_eq!(least.choose(&[0, 2], finish, &mut rng).unwrap().server, 2);
        assert_eq!(least.choose(&[], finish, &mut rng), None);

        // Round robin skips busy servers and keeps their turn order.
        let mut rr = Placer::new(Placement::RoundRobin, 4, &mut rng);
        let picks: Vec<usize> = [&[0, 1, 2, 3][..], &[0, 2, 3], &[0, 1], &[1, 2, 3]]
            .iter()
            .map(|c| rr.choose(c, finish, &mut rng).unwrap().server)
            .collect();
        assert_eq!(picks, [0, 2, 0, 1]);

        // Two choices never takes the worse of the two it drew: with two candidates it
        // always takes the better one.
        let mut two = Placer::new(Placement::TwoChoices, 4, &mut rng);
        for _ in 0..20 {
            assert_eq!(two.choose(&[0, 3], finish, &mut rng).unwrap().server, 3);
        }
        let mut random = Placer::new(Placement::Random, 4, &mut rng);
        for _ in 0..20 {
            assert!([1, 2].contains(&random.choose(&[1, 2], finish, &mut rng).unwrap().server));
        }
    }
}
