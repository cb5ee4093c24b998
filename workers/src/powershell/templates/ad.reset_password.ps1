$user = Get-StewardAdUser -Identity ([string]$p.identity)
$changeAtLogon = $true
if (Test-StewardValue 'change_password_at_logon') { $changeAtLogon = [bool]$p.change_password_at_logon }
$StewardPrior = [ordered]@{ locked_out = [bool]$user.LockedOut }
Set-ADAccountPassword @StewardAd -Identity ([string]$user.DistinguishedName) -Reset -NewPassword (ConvertTo-SecureString -String ([string]$p.password) -AsPlainText -Force) -Confirm:$false
Set-ADUser @StewardAd -Identity ([string]$user.DistinguishedName) -ChangePasswordAtLogon $changeAtLogon -Confirm:$false
if ((Test-StewardValue 'unlock') -and [bool]$p.unlock -and [bool]$user.LockedOut) {
    Unlock-ADAccount @StewardAd -Identity ([string]$user.DistinguishedName) -Confirm:$false
}
return (Out-StewardResult -Status 'changed' -Result ([ordered]@{ distinguished_name = [string]$user.DistinguishedName; change_password_at_logon = $changeAtLogon }) -Prior $StewardPrior)
