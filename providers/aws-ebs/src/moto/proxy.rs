//! An HTTP front for moto that answers EC2 `CopyVolumes` itself.
//!
//! moto does not serve CopyVolumes. The proxy listens on its own 127.0.0.1
//! port and reads each request on the EC2 query protocol (form-encoded
//! `Action=...`): CopyVolumes is answered here, every other request is
//! forwarded to moto byte for byte and moto's answer is returned unchanged
//! (except that the connection closes after each answer). CopyVolumes is
//! played by asking moto for the source volume (DescribeVolumes) and then
//! for a new volume of the source's zone (CreateVolume) with the requested
//! or the source's size and type, the requested IOPS, throughput,
//! encryption, Multi-Attach and tags; moto's CreateVolume answer is
//! rewritten into CopyVolumes' response shape (`volumeSet` of one `item`,
//! with `sourceVolumeId`). ClientToken idempotency is kept here too (moto
//! has none): the same token with the same parameters answers the volume
//! made the first time, with other parameters `IdempotentParameterMismatch`.
//! A size smaller than the source's is `InvalidParameterValue`, an absent
//! source moto's own `InvalidVolume.NotFound`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The EC2 API version moto is addressed with.
const VERSION: &str = "2016-11-15";
/// Largest request accepted (EC2 query requests are small).
const MAX_BODY: usize = 1 << 20;
/// How long one exchange may take.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The running proxy; stops when dropped.
#[derive(Debug)]
pub struct CopyVolumesProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    /// ClientToken -> (parameters, volume ID).
    tokens: Mutex<HashMap<String, (String, String)>>,
}

struct Request {
    head: Vec<u8>,
    body: Vec<u8>,
}

impl CopyVolumesProxy {
    /// Listens on a free 127.0.0.1 port in front of moto at `moto_port`.
    pub fn start(moto_port: u16) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let stop_flag = Arc::clone(&stop);
        let accept = std::thread::Builder::new()
            .name("moto-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop_flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = Arc::clone(&shared);
                    let spawned = std::thread::Builder::new()
                        .name("moto-proxy-conn".into())
                        .spawn(move || {
                            if let Err(e) = serve(conn, moto_port, &shared) {
                                tracing::debug!(error = %e, "moto proxy connection ended");
                            }
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "moto proxy cannot start a thread");
                    }
                }
            })?;
        Ok(Self {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for CopyVolumesProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn serve(conn: TcpStream, moto_port: u16, shared: &Shared) -> io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    let Some(req) = read_request(&mut reader)? else {
        return Ok(());
    };
    let form = parse_form(&req.body);
    let answer = if form.get("Action").map(String::as_str) == Some("CopyVolumes") {
        copy_volumes(&form, moto_port, shared)
    } else {
        forward(&req, moto_port)?
    };
    out.write_all(&answer)?;
    out.flush()
}

/// Reads one HTTP/1.1 request with a Content-Length body; `None` at EOF.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    let mut content_length = 0usize;
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "request head cut short",
                ))
            };
        }
        let text = String::from_utf8_lossy(&line);
        let trimmed = text.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")
                })?;
            }
            if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunked requests are not supported",
                ));
            }
            // The connection closes after one exchange; say so to moto.
            if name.eq_ignore_ascii_case("connection") {
                continue;
            }
        }
        head.extend_from_slice(trimmed.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if content_length > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request body too large",
        ));
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Some(Request { head, body }))
}

/// Sends `req` to moto and returns its whole answer, marked to close.
fn forward(req: &Request, moto_port: u16) -> io::Result<Vec<u8>> {
    let mut moto = TcpStream::connect(("127.0.0.1", moto_port))?;
    moto.set_read_timeout(Some(IO_TIMEOUT))?;
    moto.write_all(&req.head)?;
    moto.write_all(&req.body)?;
    moto.flush()?;
    let mut answer = Vec::new();
    moto.read_to_end(&mut answer)?;
    Ok(close_marked(answer))
}

/// The answer with its `Connection` header replaced by `close`.
fn close_marked(answer: Vec<u8>) -> Vec<u8> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return answer;
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let mut out = Vec::with_capacity(answer.len() + 20);
    for line in head.split("\r\n") {
        if line
            .split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&answer[end + 4..]);
    out
}

/// Calls one EC2 action on moto; returns (HTTP status, body).
fn moto_call(moto_port: u16, form: &[(String, String)]) -> io::Result<(u16, String)> {
    let body = encode_form(form);
    let mut moto = TcpStream::connect(("127.0.0.1", moto_port))?;
    moto.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(
        moto,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{moto_port}\r\n\
         Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    moto.flush()?;
    let mut answer = Vec::new();
    moto.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    Ok((status, body.to_owned()))
}

fn http_answer(status: u16, body: &str) -> Vec<u8> {
    let reason = if status == 200 { "OK" } else { "Bad Request" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn ec2_error(status: u16, code: &str, message: &str) -> Vec<u8> {
    http_answer(
        status,
        &format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>omnidisk-moto-proxy</RequestID></Response>",
            xml_escape(code),
            xml_escape(message)
        ),
    )
}

/// The text of the first `<tag>...</tag>` in `xml`.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(&xml[start..start + len])
}

/// The fields of the one volume of a DescribeVolumes answer (its items nest
/// tag and attachment items, so the last `</item>` closes the volume).
fn only_volume(described: &str) -> Option<&str> {
    let set = element(described, "volumeSet")?;
    let start = set.find("<item>")? + "<item>".len();
    let end = set.rfind("</item>")?;
    set.get(start..end)
}

fn copy_volumes(form: &BTreeMap<String, String>, moto_port: u16, shared: &Shared) -> Vec<u8> {
    match try_copy_volumes(form, moto_port, shared) {
        Ok(answer) => answer,
        Err(e) => ec2_error(500, "InternalError", &format!("moto proxy: {e}")),
    }
}

fn try_copy_volumes(
    form: &BTreeMap<String, String>,
    moto_port: u16,
    shared: &Shared,
) -> io::Result<Vec<u8>> {
    let Some(source) = form.get("SourceVolumeId").filter(|s| !s.is_empty()) else {
        return Ok(ec2_error(
            400,
            "MissingParameter",
            "The request must contain the parameter SourceVolumeId",
        ));
    };
    // The parameters that decide what the copy is, for ClientToken checks.
    let fingerprint: String = form
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "ClientToken" | "Action" | "Version"))
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    let token = form.get("ClientToken").filter(|t| !t.is_empty()).cloned();
    if let Some(token) = &token {
        let known = shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        if let Some((seen, volume)) = known {
            if seen != fingerprint {
                return Ok(ec2_error(
                    400,
                    "IdempotentParameterMismatch",
                    "The client token has been used with different parameters",
                ));
            }
            let (status, body) = moto_call(
                moto_port,
                &[
                    ("Action".into(), "DescribeVolumes".into()),
                    ("Version".into(), VERSION.into()),
                    ("VolumeId.1".into(), volume.clone()),
                ],
            )?;
            if status != 200 {
                return Ok(http_answer(status, &body));
            }
            return Ok(match only_volume(&body) {
                Some(item) => copy_answer(item, source),
                None => ec2_error(
                    400,
                    "InvalidVolume.NotFound",
                    &format!("The volume '{volume}' does not exist."),
                ),
            });
        }
    }

    let (status, described) = moto_call(
        moto_port,
        &[
            ("Action".into(), "DescribeVolumes".into()),
            ("Version".into(), VERSION.into()),
            ("VolumeId.1".into(), source.clone()),
        ],
    )?;
    if status != 200 {
        return Ok(http_answer(status, &described));
    }
    let (Some(size), Some(zone)) = (
        element(&described, "size").and_then(|s| s.trim().parse::<i64>().ok()),
        element(&described, "availabilityZone"),
    ) else {
        return Ok(ec2_error(
            400,
            "InvalidVolume.NotFound",
            &format!("The volume '{source}' does not exist."),
        ));
    };
    let source_type = element(&described, "volumeType").unwrap_or("gp2");
    let wanted = match form.get("Size") {
        None => size,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= size => n,
            _ => {
                return Ok(ec2_error(
                    400,
                    "InvalidParameterValue",
                    &format!(
                        "The size of the volume copy ({s} GiB) must be at least the size of the source volume ({size} GiB)"
                    ),
                ));
            }
        },
    };
    let mut create: Vec<(String, String)> = vec![
        ("Action".into(), "CreateVolume".into()),
        ("Version".into(), VERSION.into()),
        ("AvailabilityZone".into(), zone.to_owned()),
        ("Size".into(), wanted.to_string()),
        (
            "VolumeType".into(),
            form.get("VolumeType")
                .cloned()
                .unwrap_or_else(|| source_type.to_owned()),
        ),
    ];
    for key in [
        "Iops",
        "Throughput",
        "Encrypted",
        "KmsKeyId",
        "MultiAttachEnabled",
    ] {
        if let Some(v) = form.get(key) {
            create.push((key.into(), v.clone()));
        }
    }
    create.extend(
        form.iter()
            .filter(|(k, _)| k.starts_with("TagSpecification."))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let (status, created) = moto_call(moto_port, &create)?;
    if status != 200 {
        return Ok(http_answer(status, &created));
    }
    let inner = element(&created, "CreateVolumeResponse")
        .or_else(|| {
            // The root element carries an xmlns attribute.
            let start = created.find("<CreateVolumeResponse")?;
            let open_end = created[start..].find('>')? + start + 1;
            let close = created.rfind("</CreateVolumeResponse>")?;
            created.get(open_end..close)
        })
        .unwrap_or_default();
    if let (Some(token), Some(id)) = (token, element(inner, "volumeId")) {
        shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, (fingerprint, id.to_owned()));
    }
    Ok(copy_answer(inner, source))
}

/// CopyVolumes' response around one volume's fields.
fn copy_answer(volume_fields: &str, source: &str) -> Vec<u8> {
    // Drop moto's requestId from the fields; the response carries its own.
    let fields = match (
        volume_fields.find("<requestId>"),
        volume_fields.find("</requestId>"),
    ) {
        (Some(a), Some(b)) if b > a => format!(
            "{}{}",
            &volume_fields[..a],
            &volume_fields[b + "</requestId>".len()..]
        ),
        _ => volume_fields.to_owned(),
    };
    let source_field = if fields.contains("<sourceVolumeId>") {
        String::new()
    } else {
        format!("<sourceVolumeId>{}</sourceVolumeId>", xml_escape(source))
    };
    http_answer(
        200,
        &format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyVolumesResponse xmlns=\"http://ec2.amazonaws.com/doc/{VERSION}/\"><requestId>omnidisk-moto-proxy</requestId><volumeSet><item>{source_field}{fields}</item></volumeSet></CopyVolumesResponse>"
        ),
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Decodes `application/x-www-form-urlencoded`.
fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode_form(pairs: &[(String, String)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_of_a_describe_answer_keeps_its_nested_items() {
        let xml = "<DescribeVolumesResponse><volumeSet><item><volumeId>vol-1</volumeId><tagSet><item><key>a</key></item></tagSet><size>3</size></item></volumeSet></DescribeVolumesResponse>";
        assert_eq!(
            only_volume(xml),
            Some(
                "<volumeId>vol-1</volumeId><tagSet><item><key>a</key></item></tagSet><size>3</size>"
            )
        );
        assert_eq!(only_volume("<volumeSet/>"), None);
    }

    #[test]
    fn forms_round_trip() {
        let pairs = vec![
            ("Action".to_owned(), "CopyVolumes".to_owned()),
            (
                "TagSpecification.1.Tag.1.Value".to_owned(),
                "a b/c=d&e%".to_owned(),
            ),
        ];
        let form = parse_form(encode_form(&pairs).as_bytes());
        assert_eq!(form.get("Action").map(String::as_str), Some("CopyVolumes"));
        assert_eq!(
            form.get("TagSpecification.1.Tag.1.Value")
                .map(String::as_str),
            Some("a b/c=d&e%")
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }

    #[test]
    fn copy_answer_wraps_the_volume_and_names_the_source() {
        let answer = String::from_utf8(copy_answer(
            "<requestId>x</requestId><volumeId>vol-1</volumeId>",
            "vol-0",
        ))
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("<volumeSet><item><sourceVolumeId>vol-0</sourceVolumeId><volumeId>vol-1</volumeId></item></volumeSet>"), "{answer}");
        assert!(!answer.contains("<requestId>x</requestId>"), "{answer}");
        let closed = String::from_utf8(close_marked(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nbody".to_vec(),
        ))
        .unwrap();
        assert_eq!(closed, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody");
    }
}
