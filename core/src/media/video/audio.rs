//! The audio path: decode, resample to AAC's format, encode once, mux into every rendition.

use ff::Rescale as _;
use ff::{Packet, Rational, codec, filter, format, frame};

use super::transcode::VideoOut;
use super::*;

pub(super) struct AudioPath {
    pub(super) index: usize,
    pub(super) decoder: codec::decoder::Audio,
    pub(super) graph: filter::Graph,
    pub(super) encoder: codec::encoder::audio::Encoder,
}

pub(super) fn open_audio(astream: &format::stream::Stream) -> Result<AudioPath, MediaError> {
    let index = astream.index();
    let mut actx = codec::context::Context::from_parameters(astream.parameters())
        .map_err(failed("audio decoder"))?;
    actx.set_threading(codec::threading::Config {
        kind: codec::threading::Type::Frame,
        count: 0,
        ..Default::default()
    });
    let mut decoder = actx
        .decoder()
        .audio()
        .map_err(|e| MediaError::Invalid(format!("the audio track cannot be decoded: {e}")))?;
    decoder.set_packet_time_base(astream.time_base());
    let aac = codec::encoder::find(codec::Id::AAC)
        .ok_or_else(|| MediaError::Processing("this FFmpeg build has no AAC encoder".into()))?;
    let mut enc = codec::context::Context::new_with_codec(aac)
        .encoder()
        .audio()
        .map_err(failed("AAC encoder"))?;
    enc.set_rate(AUDIO_RATE);
    enc.set_channel_layout(ff::ChannelLayout::STEREO);
    enc.set_format(format::Sample::F32(format::sample::Type::Planar));
    enc.set_bit_rate(AUDIO_BITRATE);
    enc.set_time_base(Rational::new(1, AUDIO_RATE));
    // MPEG-TS carries ADTS headers, so no global header for the audio.
    let encoder = enc
        .open_as_with(aac, Dictionary::new())
        .map_err(failed("opening the AAC encoder"))?;

    let layout = decoder.channel_layout();
    let layout_bits = if layout.bits() != 0 {
        layout.bits()
    } else {
        ff::ChannelLayout::default(i32::from(decoder.channels().max(1))).bits()
    };
    let args = format!(
        "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
        astream.time_base().numerator(),
        astream.time_base().denominator(),
        decoder.rate(),
        decoder.format().name(),
        layout_bits
    );
    let mut graph = filter::Graph::new();
    add_filter(&mut graph, "abuffer", "in", &args)?;
    add_filter(&mut graph, "abuffersink", "out", "")?;
    graph
        .output("in", 0)
        .and_then(|p| p.input("out", 0))
        .and_then(|p| {
            p.parse(&format!(
                "aresample={AUDIO_RATE},aformat=sample_fmts=fltp:sample_rates={AUDIO_RATE}:channel_layouts=stereo"
            ))
        })
        .map_err(failed("audio filter"))?;
    graph.validate().map_err(failed("audio filter"))?;
    if let Some(mut sink) = graph.get("out") {
        sink.sink().set_frame_size(encoder.frame_size().max(1));
    }
    Ok(AudioPath {
        index,
        decoder,
        graph,
        encoder,
    })
}

impl AudioPath {
    /// Decodes a packet (or flushes everything on `None`) and writes the AAC packets into every
    /// rendition.
    pub(super) fn feed(
        &mut self,
        packet: Option<&Packet>,
        outputs: &mut [VideoOut],
    ) -> Result<(), MediaError> {
        let mut decoded = frame::Audio::empty();
        match packet {
            Some(p) => {
                if let Err(e) = self.decoder.send_packet(p) {
                    tracing::debug!(error = %e, "skipping an undecodable audio packet");
                }
            }
            None => {
                let _ = self.decoder.send_eof();
            }
        }
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            let ts = decoded.timestamp();
            decoded.set_pts(ts);
            self.graph
                .get("in")
                .ok_or_else(|| MediaError::Processing("audio filter lost its input".into()))?
                .source()
                .add(&decoded)
                .map_err(failed("audio filter"))?;
            self.drain(outputs)?;
        }
        if packet.is_none() {
            self.graph
                .get("in")
                .ok_or_else(|| MediaError::Processing("audio filter lost its input".into()))?
                .source()
                .flush()
                .map_err(failed("audio filter"))?;
            self.drain(outputs)?;
            self.encoder.send_eof().map_err(failed("AAC encoder"))?;
            self.write_packets(outputs)?;
        }
        Ok(())
    }

    pub(super) fn drain(&mut self, outputs: &mut [VideoOut]) -> Result<(), MediaError> {
        let mut resampled = frame::Audio::empty();
        let sink_tb = self
            .graph
            .get("out")
            .map_or(Rational::new(1, AUDIO_RATE), |mut s| s.sink().time_base());
        while let Some(mut sink) = self.graph.get("out") {
            if sink.sink().frame(&mut resampled).is_err() {
                break;
            }
            if let Some(pts) = resampled.pts() {
                resampled.set_pts(Some(pts.rescale(sink_tb, Rational::new(1, AUDIO_RATE))));
            }
            self.encoder
                .send_frame(&resampled)
                .map_err(failed("AAC encoder"))?;
            self.write_packets(outputs)?;
        }
        Ok(())
    }

    fn write_packets(&mut self, outputs: &mut [VideoOut]) -> Result<(), MediaError> {
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            for out in outputs.iter_mut() {
                let mut copy = packet.clone();
                copy.set_stream(1);
                copy.rescale_ts(Rational::new(1, AUDIO_RATE), out.audio_tb);
                copy.write_interleaved(&mut out.octx)
                    .map_err(failed("writing an audio segment"))?;
            }
        }
        Ok(())
    }
}
