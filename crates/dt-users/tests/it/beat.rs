//! Of several `beat` processes, exactly one sweeps; another takes over when it stops.

use std::time::Duration;

use crate::helpers::TestApp;

#[tokio::test]
async fn exactly_one_beat_sweeps_and_another_takes_over_when_it_dies() {
    let app = TestApp::spawn().await;
    let beats: Vec<_> = (0..3).map(|_| app.beat(Duration::from_secs(60))).collect();
    for round in 0..3 {
        let mut swept = 0;
        for beat in &beats {
            if beat.tick().await.unwrap() {
                swept += 1;
            }
        }
        assert_eq!(swept, 1, "round {round}");
    }
    // The holder stops ticking; once its lease (three intervals) has run out, one other
    // instance takes over, and only one.
    let survivors = &beats[1..];
    let mut swept = 0;
    for beat in survivors {
        swept += usize::from(beat.tick().await.unwrap());
    }
    assert_eq!(swept, 0, "the lease is still held");
    app.clock.advance_secs(181);
    for beat in survivors {
        swept += usize::from(beat.tick().await.unwrap());
    }
    assert_eq!(swept, 1);
}
