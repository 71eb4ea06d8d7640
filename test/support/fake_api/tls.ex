defmodule LibclusterDroplet.FakeAPI.TLS do
  @moduledoc """
  Certificates for the fake DigitalOcean API's HTTPS mode.

  `generate/0` makes a fresh certificate authority and a server certificate
  it signed, both ECDSA P-256 with SHA-256, valid from a day ago for a year.
  The server certificate names `localhost` (DNS SAN), `127.0.0.1` and `::1`
  (IP SANs), plus `127.0.0.1` as a DNS SAN for the sake of OTP's hostname
  check (see the comment in `generate/0`); it is an X.509 v3 end-entity certificate (`CA:FALSE`, key usage
  `digitalSignature`, extended key usage `serverAuth`, subject and authority
  key identifiers), which is what rustls/webpki, OpenSSL (even with
  `-x509_strict`) and Erlang's `:ssl` accept.

  The certificates are built by hand rather than with
  `:public_key.pkix_test_data/1` because the latter (OTP 25) writes the curve
  as parameters of the ECDSA signature algorithm identifier, which RFC 5758
  forbids and webpki rejects as an unsupported signature algorithm.
  """

  @typedoc "What `generate/0` returns; `key` is in the form `:ssl`'s `key` option takes."
  @type material :: %{
          ca_der: binary,
          ca_pem: binary,
          cert_der: binary,
          key: {:ECPrivateKey, binary}
        }

  @ecdsa_with_sha256 {:SignatureAlgorithm, {1, 2, 840, 10045, 4, 3, 2}, :asn1_NOVALUE}
  @ec_public_key {1, 2, 840, 10045, 2, 1}
  @secp256r1 {1, 2, 840, 10045, 3, 1, 7}
  @server_auth {1, 3, 6, 1, 5, 5, 7, 3, 1}

  @doc """
  Generates a CA and a server certificate for `localhost`, `127.0.0.1` and
  `::1`, signed by that CA.
  """
  @spec generate() :: material
  def generate do
    now = DateTime.utc_now() |> DateTime.truncate(:second)
    validity = {:Validity, asn1_time(DateTime.add(now, -86_400)), asn1_time(one_year_on(now))}

    ca_key = new_key()
    # A name of its own, so a client holding another run's CA reports an
    # unknown issuer rather than a bad signature from a namesake CA.
    ca_name = name("libcluster_droplet fake DigitalOcean API CA #{hex(4)}")

    ca_der =
      sign(
        ca_name,
        ca_name,
        validity,
        ca_key,
        [
          {:Extension, {2, 5, 29, 19}, true, {:BasicConstraints, true, :asn1_NOVALUE}},
          {:Extension, {2, 5, 29, 15}, true, [:keyCertSign, :cRLSign]},
          {:Extension, {2, 5, 29, 14}, false, key_id(ca_key)}
        ],
        ca_key
      )

    key = new_key()

    cert_der =
      sign(
        ca_name,
        name("localhost"),
        validity,
        key,
        [
          {:Extension, {2, 5, 29, 19}, true, {:BasicConstraints, false, :asn1_NOVALUE}},
          {:Extension, {2, 5, 29, 15}, true, [:digitalSignature]},
          {:Extension, {2, 5, 29, 37}, false, [@server_auth]},
          {:Extension, {2, 5, 29, 17}, false,
           [
             dNSName: ~c"localhost",
             iPAddress: <<127, 0, 0, 1>>,
             iPAddress: <<1::128>>,
             # OTP's :httpc passes the URL's host as the TLS server name, and
             # :ssl then checks it only against DNS names, never IP SANs: with
             # this entry `https://127.0.0.1:PORT` verifies there as well.
             # rustls and OpenSSL match the IP SAN (webpki skips this entry
             # as a malformed DNS name).
             dNSName: ~c"127.0.0.1"
           ]},
          {:Extension, {2, 5, 29, 14}, false, key_id(key)},
          {:Extension, {2, 5, 29, 35}, false,
           {:AuthorityKeyIdentifier, key_id(ca_key), :asn1_NOVALUE, :asn1_NOVALUE}}
        ],
        ca_key
      )

    %{
      ca_der: ca_der,
      ca_pem: :public_key.pem_encode([{:Certificate, ca_der, :not_encrypted}]),
      cert_der: cert_der,
      key: {:ECPrivateKey, :public_key.der_encode(:ECPrivateKey, key)}
    }
  end

  @doc """
  Writes `pem` to a new file, readable only by its owner, in the system's
  temporary directory and returns its path.
  """
  @spec write_ca_file!(binary) :: Path.t()
  def write_ca_file!(pem) do
    path = Path.join(System.tmp_dir!(), "libcluster_droplet_fake_api_ca_#{hex(8)}.pem")
    File.write!(path, pem, [:exclusive])
    File.chmod!(path, 0o600)
    path
  end

  defp hex(bytes), do: bytes |> :rand.bytes() |> Base.encode16(case: :lower)

  defp sign(issuer, subject, validity, subject_key, extensions, issuer_key) do
    spki =
      {:OTPSubjectPublicKeyInfo, {:PublicKeyAlgorithm, @ec_public_key, {:namedCurve, @secp256r1}},
       {:ECPoint, public_point(subject_key)}}

    tbs =
      {:OTPTBSCertificate, :v3, serial(), @ecdsa_with_sha256, issuer, validity, subject, spki,
       :asn1_NOVALUE, :asn1_NOVALUE, extensions}

    :public_key.pkix_sign(tbs, issuer_key)
  end

  defp new_key, do: :public_key.generate_key({:namedCurve, @secp256r1})

  # The ECPrivateKey record: {:ECPrivateKey, version, private, params, public, attributes}.
  defp public_point(key), do: elem(key, 4)

  defp key_id(key), do: :crypto.hash(:sha, public_point(key))

  # RFC 5280: a positive serial of at most 20 octets; clearing the top bit of
  # 16 random bytes keeps it positive without a leading zero octet.
  defp serial do
    <<_::1, rest::bitstring>> = :rand.bytes(16)
    :binary.decode_unsigned(<<0::1, rest::bitstring>>) + 1
  end

  defp name(common_name),
    do: {:rdnSequence, [[{:AttributeTypeAndValue, {2, 5, 4, 3}, {:utf8String, common_name}}]]}

  defp one_year_on(now), do: DateTime.add(now, 365 * 86_400)

  # RFC 5280: UTCTime through 2049, GeneralizedTime from 2050.
  defp asn1_time(%DateTime{year: year} = t) when year < 2050,
    do: {:utcTime, t |> Calendar.strftime("%y%m%d%H%M%SZ") |> String.to_charlist()}

  defp asn1_time(t),
    do: {:generalTime, t |> Calendar.strftime("%Y%m%d%H%M%SZ") |> String.to_charlist()}
end
